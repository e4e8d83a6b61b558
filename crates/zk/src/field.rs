//! The field: Goldilocks for data, its degree-2 binomial extension for challenges and claims, and their
//! canonical byte encodings (little-endian u64 per base coefficient).

use p3_field::extension::BinomialExtensionField;
use p3_field::{BasedVectorSpace, PrimeCharacteristicRing, PrimeField64};

/// The base field, Goldilocks.
pub type F = p3_goldilocks::Goldilocks;
/// The degree-2 extension (`X² − 7`), where challenges live.
pub type Ext = BinomialExtensionField<F, 2>;

/// Goldilocks' order.
pub const P: u64 = F::ORDER_U64;

/// A signed 64-bit integer as a field element (negative values wrap around `P`).
pub fn from_i64(v: i64) -> F {
    if v >= 0 {
        F::from_u64(v as u64)
    } else {
        -F::from_u64(v.unsigned_abs())
    }
}

/// An extension element from a base element.
pub fn lift(x: F) -> Ext {
    Ext::from(x)
}

/// The canonical 16-byte encoding of an extension element.
pub fn ext_bytes(x: &Ext) -> [u8; 16] {
    let c: &[F] = BasedVectorSpace::<F>::as_basis_coefficients_slice(x);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&c[0].as_canonical_u64().to_le_bytes());
    out[8..].copy_from_slice(&c[1].as_canonical_u64().to_le_bytes());
    out
}

/// Decode [`ext_bytes`]; `None` unless both coefficients are canonical (below `P`).
pub fn ext_from_bytes(b: &[u8; 16]) -> Option<Ext> {
    let lo = u64::from_le_bytes(b[..8].try_into().ok()?);
    let hi = u64::from_le_bytes(b[8..].try_into().ok()?);
    if lo >= P || hi >= P {
        return None;
    }
    Ext::from_basis_coefficients_slice(&[F::from_u64(lo), F::from_u64(hi)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use p3_field::Field;

    #[test]
    fn encoding_round_trips_and_refuses_non_canonical_coefficients() {
        let x = Ext::from_basis_coefficients_slice(&[from_i64(-5), F::from_u64(123)]).unwrap();
        let b = ext_bytes(&x);
        assert_eq!(ext_from_bytes(&b), Some(x));
        assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), P - 5);
        let mut bad = b;
        bad[..8].copy_from_slice(&P.to_le_bytes());
        assert_eq!(ext_from_bytes(&bad), None);
        // a field: every non-zero element has an inverse
        assert_eq!(x * x.inverse(), Ext::ONE);
        assert_eq!(from_i64(-1) + F::ONE, F::ZERO);
    }
}
