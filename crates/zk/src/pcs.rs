//! The commitment to a multilinear polynomial over Goldilocks: a tensor-code (Ligero-style) scheme with
//! Reed–Solomon rows and a keccak Merkle tree over columns. Transparent, hash-based, post-quantum.
//!
//! A table of `2ⁿ` base elements is laid out as a matrix of `2^a` rows by `2^b` columns (`a + b = n`,
//! entry `i·2^b + j`); a table whose entries from `len` on are zero by construction (public) stores only
//! its first `R = ⌈len/2^b⌉` rows — the others are zero and are neither encoded nor opened. Each row, read as the coefficients of a polynomial of degree `< 2^b`, is evaluated on
//! the `2^(b+β)` roots of unity (rate `2^-β`); leaf `q` of the Merkle tree is the keccak-256 of column `q`
//! of the encoded matrix (its `2^a` elements, 8 bytes little-endian each). The commitment is the root.
//!
//! Opening at `z = (z_row, z_col)`: the prover sends `u = Σᵢ eq(z_row, i)·rowᵢ` (`2^b` extension elements);
//! the verifier checks `Σⱼ eq(z_col, j)·u[j]` is the claimed value, encodes `u` itself, draws
//! [`QUERIES`] column positions, and for each opened column (with a Merkle multiproof) checks
//! `Σᵢ eq(z_row, i)·column[i] = Enc(u)[q]`. The point is chosen by the verifier's challenges after the
//! commitment, so `eq(z_row, ·)` is a tensor of random challenges — the combination for which tensor
//! codes have proximity gaps (Diamond–Posen); see `docs/spec/zk.md` for the soundness budget.

use p3_dft::{Radix2Dit, TwoAdicSubgroupDft};
use p3_field::{BasedVectorSpace, PrimeCharacteristicRing, PrimeField64};
use p3_matrix::dense::RowMajorMatrix;
use p3_matrix::Matrix;
use verity_core::{keccak256, multiproof, multiproof_root, Hash};

use crate::channel::Channel;
use crate::field::{Ext, F};
use crate::mle::eq_table;
use crate::ZkError;

/// `β`: the code's rate is `2^-β`.
pub const BLOWUP_BITS: usize = 3;
/// Proof-of-work bits before the column queries.
pub const GRIND_BITS: u32 = 16;
/// Column queries per opening: at rate 1/8 a table farther than δ = 7/24 (a third of the code's
/// distance) from the code passes one query with probability at most 17/24, so 169 queries give 84 bits
/// and the grinding 16 more (`docs/spec/zk.md` §7).
pub const QUERIES: usize = 169;

/// Row and column bits for a table of `2ⁿ` entries: about 8·√(2ⁿ) columns, which balances the combined
/// row (one extension element per column) against the opened columns (one base element per row and
/// query) in the proof.
pub fn split(n: usize) -> (usize, usize) {
    let b = ((n + 6) / 2).min(n);
    (n - b, b)
}

/// A committed table with what the prover keeps to open it.
#[derive(Clone, Debug)]
pub struct Committed {
    n: usize,
    r: usize,
    rows: Vec<F>,
    /// Encoded matrix, stored by column: column `q` is `encoded[q·2^a .. (q+1)·2^a]`.
    encoded: Vec<F>,
    leaves: Vec<Hash>,
    /// The commitment.
    pub root: Hash,
}

fn encode_columns(rows: &[F], r: usize, b: usize) -> Vec<F> {
    // a matrix whose columns are the rows' coefficient vectors, zero-padded; one DFT per column
    let width = r;
    let height = 1usize << (b + BLOWUP_BITS);
    let mut m = vec![F::ZERO; height * width];
    for i in 0..width {
        for j in 0..1usize << b {
            m[j * width + i] = rows[i * (1 << b) + j];
        }
    }
    let out = Radix2Dit::<F>::default().dft_batch(RowMajorMatrix::new(m, width));
    out.to_row_major_matrix().values
}

fn leaf(col: &[F]) -> Hash {
    let bytes: Vec<u8> = col
        .iter()
        .flat_map(|x| x.as_canonical_u64().to_le_bytes())
        .collect();
    keccak256(&bytes)
}

/// Stored rows of a table of `2ⁿ` entries that is zero from `len` on.
pub fn stored_rows(n: usize, len: usize) -> usize {
    let (a, b) = split(n);
    len.div_ceil(1 << b).clamp(1, 1 << a)
}

/// Commit to a table of `2ⁿ` entries given by its first `values.len()` (the rest are zero).
pub fn commit(mut values: Vec<F>, n: usize) -> Committed {
    assert!(values.len() <= 1 << n, "a table of at most 2^n entries");
    let (_, b) = split(n);
    let r = stored_rows(n, values.len());
    values.resize(r << b, F::ZERO);
    let encoded = encode_columns(&values, r, b);
    let leaves: Vec<Hash> = encoded.chunks(r).map(leaf).collect();
    let root = verity_core::merkle_root(&leaves);
    Committed {
        n,
        r,
        rows: values,
        encoded,
        leaves,
        root,
    }
}

impl Committed {
    /// Bytes the prover keeps for this commitment (the table, its encoding and the Merkle leaves).
    pub fn bytes(&self) -> usize {
        8 * (self.rows.len() + self.encoded.len()) + 32 * self.leaves.len()
    }
}

fn encode_ext(u: &[Ext]) -> Vec<Ext> {
    let len = u.len() << BLOWUP_BITS;
    let mut m = vec![F::ZERO; len * 2];
    for (j, x) in u.iter().enumerate() {
        let c: &[F] = x.as_basis_coefficients_slice();
        m[j * 2] = c[0];
        m[j * 2 + 1] = c[1];
    }
    let out = Radix2Dit::<F>::default()
        .dft_batch(RowMajorMatrix::new(m, 2))
        .to_row_major_matrix()
        .values;
    out.chunks(2)
        .map(|c| Ext::from_basis_coefficients_slice(c).unwrap_or_default())
        .collect()
}

/// Open the committed table (`2ⁿ` entries, zero from `len` on) at `point` to `value` (both sides; the
/// prover passes its [`Committed`]).
pub fn open(
    ch: &mut Channel,
    prover: Option<&Committed>,
    root: &Hash,
    (n, len): (usize, usize),
    point: &[Ext],
    value: Ext,
) -> Result<(), ZkError> {
    if point.len() != n {
        return Err(ZkError::rejected("an opening point has the wrong length"));
    }
    let (a, b) = split(n);
    let r = stored_rows(n, len);
    let (z_row, z_col) = point.split_at(a);
    let mut eq_row = eq_table(z_row);
    eq_row.truncate(r);
    let u = ch.ext(b"pcs row", 1 << b, || {
        let c = prover.expect("prover data");
        debug_assert_eq!((c.n, c.r), (n, r));
        let mut u = vec![Ext::ZERO; 1 << b];
        for (i, e) in eq_row.iter().enumerate() {
            for (j, x) in c.rows[i << b..(i + 1) << b].iter().enumerate() {
                u[j] += *e * *x;
            }
        }
        u
    })?;
    let eq_col = eq_table(z_col);
    let at: Ext = u.iter().zip(&eq_col).map(|(x, e)| *x * *e).sum();
    if at != value {
        ch.reject("the committed table does not have the claimed value at the point")?;
    }
    let enc = encode_ext(&u);
    ch.grind(GRIND_BITS)?;
    let bits = (b + BLOWUP_BITS) as u32;
    let mut qs: Vec<usize> = (0..QUERIES).map(|_| ch.index(bits)).collect();
    qs.sort_unstable();
    qs.dedup();
    let width = r;
    let cols = ch.base(b"pcs columns", qs.len() * width, || {
        let c = prover.expect("prover data");
        qs.iter()
            .flat_map(|&q| c.encoded[q * width..(q + 1) * width].iter().copied())
            .collect()
    })?;
    let max_hashes = (qs.len() * (b + BLOWUP_BITS)) as u64;
    let nh = ch.count(b"pcs path length", max_hashes, || {
        let c = prover.expect("prover data");
        multiproof(&c.leaves, &qs).map_or(0, |p| p.len() as u64)
    })? as usize;
    let path = ch.hashes(b"pcs path", nh, || {
        let c = prover.expect("prover data");
        multiproof(&c.leaves, &qs).unwrap_or_default()
    })?;
    let items: Vec<(usize, Hash)> = qs
        .iter()
        .zip(cols.chunks(width))
        .map(|(&q, col)| (q, leaf(col)))
        .collect();
    if multiproof_root(1 << (b + BLOWUP_BITS), &items, &path).as_ref() != Some(root) {
        ch.reject("an opened column is not in the commitment")?;
    }
    for (&q, col) in qs.iter().zip(cols.chunks(width)) {
        let combined: Ext = col.iter().zip(&eq_row).map(|(x, e)| *e * *x).sum();
        if combined != enc[q] {
            ch.reject(
                "an opened column does not match the combined row: the commitment is not to a codeword",
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::{from_i64, lift};
    use crate::mle::eval;

    #[test]
    fn openings_verify_and_wrong_values_or_roots_fail() {
        for (n, len) in [
            (0usize, 1usize),
            (1, 2),
            (5, 32),
            (10, 1024),
            (10, 700),
            (12, 1),
        ] {
            let mut vals: Vec<F> = (0..len as i64).map(|i| from_i64(i * i - 77)).collect();
            let c = commit(vals.clone(), n);
            vals.resize(1 << n, F::ZERO);
            let mut chp = Channel::prover(b"pcs");
            let point = chp.challenges(n);
            let ext_vals: Vec<Ext> = vals.iter().map(|x| lift(*x)).collect();
            let v = eval(&ext_vals, &point);
            open(&mut chp, Some(&c), &c.root, (n, len), &point, v).unwrap();
            let proof = chp.into_proof();
            let mut chv = Channel::verifier(b"pcs", proof.clone());
            let p2 = chv.challenges(n);
            assert_eq!(p2, point);
            open(&mut chv, None, &c.root, (n, len), &point, v).unwrap();
            chv.finish().unwrap();
            // another value
            let mut chv = Channel::verifier(b"pcs", proof.clone());
            chv.challenges(n);
            assert!(open(&mut chv, None, &c.root, (n, len), &point, v + Ext::ONE).is_err());
            // another root
            let mut chv = Channel::verifier(b"pcs", proof.clone());
            chv.challenges(n);
            assert!(open(&mut chv, None, &keccak256(b"x"), (n, len), &point, v).is_err());
            // a flipped byte anywhere in the columns
            let mut bad = proof.clone();
            let at = bad.len() - 40;
            bad[at] ^= 1;
            let mut chv = Channel::verifier(b"pcs", bad);
            chv.challenges(n);
            assert!(open(&mut chv, None, &c.root, (n, len), &point, v).is_err());
        }
    }
}
