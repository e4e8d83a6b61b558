//! keccak256 of many short messages (at most one 136-byte block each), as Merkle trees need: leaves of
//! 32 bytes and parents of 64. Eight messages at a time with AVX-512F, four with AVX2 (one 64-bit lane of
//! each state per vector register), otherwise one at a time; always the same bits as [`keccak256`].
//!
//! [`keccak256`]: crate::keccak256

use crate::hash::Hash;

/// Bytes absorbed per block by keccak256 (rate).
const RATE: usize = 136;

const RC: [u64; 24] = [
    0x0000_0000_0000_0001,
    0x0000_0000_0000_8082,
    0x8000_0000_0000_808a,
    0x8000_0000_8000_8000,
    0x0000_0000_0000_808b,
    0x0000_0000_8000_0001,
    0x8000_0000_8000_8081,
    0x8000_0000_0000_8009,
    0x0000_0000_0000_008a,
    0x0000_0000_0000_0088,
    0x0000_0000_8000_8009,
    0x0000_0000_8000_000a,
    0x0000_0000_8000_808b,
    0x8000_0000_0000_008b,
    0x8000_0000_0000_8089,
    0x8000_0000_0000_8003,
    0x8000_0000_0000_8002,
    0x8000_0000_0000_0080,
    0x0000_0000_0000_800a,
    0x8000_0000_8000_000a,
    0x8000_0000_8000_8081,
    0x8000_0000_0000_8080,
    0x0000_0000_8000_0001,
    0x8000_0000_8000_8008,
];

/// Rotation offsets along the rho-pi lane walk starting at lane 1 (spelled out in `rho_pi!`).
#[cfg(test)]
const RHO: [u32; 24] = [
    1, 3, 6, 10, 15, 21, 28, 36, 45, 55, 2, 14, 27, 41, 56, 8, 25, 43, 62, 18, 39, 61, 20, 44,
];
/// Destination lanes along that walk.
#[cfg(test)]
const PI: [usize; 24] = [
    10, 7, 11, 17, 18, 3, 5, 16, 8, 21, 24, 4, 15, 23, 19, 13, 12, 2, 20, 14, 22, 9, 6, 1,
];

/// The keccak-f[1600] rounds over a state of 25 lanes, with the lane operations given as macros (the
/// rotation macro takes literal offsets, so vector rotations use immediate shifts).
macro_rules! rounds {
    ($a:ident, $t:ty, $xor:ident, $andn:ident, $rotl:ident, $rc:ident) => {
        for rc in RC {
            let mut c: [$t; 5] = [$a[0]; 5];
            for x in 0..5 {
                c[x] = $xor!($xor!($a[x], $a[x + 5]), $xor!($xor!($a[x + 10], $a[x + 15]), $a[x + 20]));
            }
            for x in 0..5 {
                let d = $xor!(c[(x + 4) % 5], $rotl!(c[(x + 1) % 5], 1));
                for y in 0..5 {
                    $a[x + 5 * y] = $xor!($a[x + 5 * y], d);
                }
            }
            rho_pi!($a, $rotl; (10, 1), (7, 3), (11, 6), (17, 10), (18, 15), (3, 21), (5, 28), (16, 36),
                (8, 45), (21, 55), (24, 2), (4, 14), (15, 27), (23, 41), (19, 56), (13, 8), (12, 25),
                (2, 43), (20, 62), (14, 18), (22, 39), (9, 61), (6, 20), (1, 44));
            for y in 0..5 {
                let row = [$a[5 * y], $a[5 * y + 1], $a[5 * y + 2], $a[5 * y + 3], $a[5 * y + 4]];
                for x in 0..5 {
                    $a[5 * y + x] = $xor!(row[x], $andn!(row[(x + 1) % 5], row[(x + 2) % 5]));
                }
            }
            $a[0] = $xor!($a[0], $rc!(rc));
        }
    };
}

/// The rho and pi steps: walk the lanes from lane 1, moving each to `PI[i]` rotated by `RHO[i]`
/// (the pairs below are those two tables, spelled out so each rotation is by a literal).
macro_rules! rho_pi {
    ($a:ident, $rotl:ident; $(($j:literal, $r:literal)),*) => {{
        let mut last = $a[1];
        $(
            let tmp = $a[$j];
            $a[$j] = $rotl!(last, $r);
            last = tmp;
        )*
        let _ = last;
    }};
}

macro_rules! sxor {
    ($x:expr, $y:expr) => {
        $x ^ $y
    };
}
macro_rules! sandn {
    ($x:expr, $y:expr) => {
        !$x & $y
    };
}
macro_rules! srotl {
    ($x:expr, $n:literal) => {
        $x.rotate_left($n)
    };
}
macro_rules! src {
    ($c:expr) => {
        $c
    };
}

// The rounds are shared with the vector path, where `^=` does not apply.
#[allow(clippy::assign_op_pattern)]
fn permute(a: &mut [u64; 25]) {
    rounds!(a, u64, sxor, sandn, srotl, src);
}

/// The padded single block of a message of at most 135 bytes, as 17 little-endian lanes.
fn block(msg: &[u8]) -> [u64; 17] {
    let mut b = [0u8; RATE];
    b[..msg.len()].copy_from_slice(msg);
    b[msg.len()] ^= 0x01;
    b[RATE - 1] ^= 0x80;
    let mut lanes = [0u64; 17];
    for (l, c) in lanes.iter_mut().zip(b.chunks_exact(8)) {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        *l = u64::from_le_bytes(w);
    }
    lanes
}

fn squeeze(a: &[u64; 25]) -> Hash {
    let mut out = [0u8; 32];
    for (o, l) in out.chunks_exact_mut(8).zip(a) {
        o.copy_from_slice(&l.to_le_bytes());
    }
    Hash(out)
}

/// keccak256 of a message of at most 135 bytes (longer ones go through the incremental hasher).
pub fn keccak256_short(msg: &[u8]) -> Hash {
    if msg.len() >= RATE {
        return crate::hash::keccak256(msg);
    }
    let mut a = [0u64; 25];
    a[..17].copy_from_slice(&block(msg));
    permute(&mut a);
    squeeze(&a)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{block, Hash, RC};
    use std::arch::x86_64::*;

    macro_rules! vxor {
        ($x:expr, $y:expr) => {
            _mm256_xor_si256($x, $y)
        };
    }
    macro_rules! vandn {
        ($x:expr, $y:expr) => {
            _mm256_andnot_si256($x, $y)
        };
    }
    macro_rules! vrotl {
        ($x:expr, $n:literal) => {{
            let v = $x;
            _mm256_or_si256(
                _mm256_slli_epi64::<$n>(v),
                _mm256_srli_epi64::<{ 64 - $n }>(v),
            )
        }};
    }
    macro_rules! vrc {
        ($c:expr) => {
            _mm256_set1_epi64x($c as i64)
        };
    }

    /// Hash four messages of at most 135 bytes each.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn hash4(msgs: [&[u8]; 4]) -> [Hash; 4] {
        let blocks = msgs.map(block);
        let mut a = [_mm256_setzero_si256(); 25];
        for (i, lane) in a.iter_mut().enumerate().take(17) {
            *lane = _mm256_set_epi64x(
                blocks[3][i] as i64,
                blocks[2][i] as i64,
                blocks[1][i] as i64,
                blocks[0][i] as i64,
            );
        }
        rounds!(a, __m256i, vxor, vandn, vrotl, vrc);
        let mut out = [Hash::ZERO; 4];
        for (i, lane) in a.iter().take(4).enumerate() {
            let mut w = [0u64; 4];
            _mm256_storeu_si256(w.as_mut_ptr() as *mut __m256i, *lane);
            for (k, o) in out.iter_mut().enumerate() {
                o.0[8 * i..8 * i + 8].copy_from_slice(&w[k].to_le_bytes());
            }
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{block, Hash, RC};
    use std::arch::x86_64::*;

    macro_rules! zxor {
        ($x:expr, $y:expr) => {
            _mm512_xor_si512($x, $y)
        };
    }
    macro_rules! zandn {
        ($x:expr, $y:expr) => {
            _mm512_andnot_si512($x, $y)
        };
    }
    macro_rules! zrotl {
        ($x:expr, $n:literal) => {
            _mm512_rol_epi64::<$n>($x)
        };
    }
    macro_rules! zrc {
        ($c:expr) => {
            _mm512_set1_epi64($c as i64)
        };
    }

    /// Hash eight messages of at most 135 bytes each.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn hash8(msgs: [&[u8]; 8]) -> [Hash; 8] {
        let blocks = msgs.map(block);
        let mut a = [_mm512_setzero_si512(); 25];
        for (i, lane) in a.iter_mut().enumerate().take(17) {
            *lane = _mm512_set_epi64(
                blocks[7][i] as i64,
                blocks[6][i] as i64,
                blocks[5][i] as i64,
                blocks[4][i] as i64,
                blocks[3][i] as i64,
                blocks[2][i] as i64,
                blocks[1][i] as i64,
                blocks[0][i] as i64,
            );
        }
        rounds!(a, __m512i, zxor, zandn, zrotl, zrc);
        let mut out = [Hash::ZERO; 8];
        for (i, lane) in a.iter().take(4).enumerate() {
            let mut w = [0u64; 8];
            _mm512_storeu_si512(w.as_mut_ptr() as *mut __m512i, *lane);
            for (k, o) in out.iter_mut().enumerate() {
                o.0[8 * i..8 * i + 8].copy_from_slice(&w[k].to_le_bytes());
            }
        }
        out
    }
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `VERITY_PORTABLE_KECCAK=1` disables the vector paths (for testing and comparison).
fn force_portable() -> bool {
    static FORCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCE.get_or_init(|| std::env::var_os("VERITY_PORTABLE_KECCAK").is_some_and(|v| v == "1"))
}

/// Batches at least this long are split across the machine's cores.
const PARALLEL_MIN: usize = 1 << 16;

fn cores() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8)
    })
}

/// keccak256 of each message (in order). Messages shorter than 136 bytes take the batched single-block
/// path (eight at a time with AVX-512F, four with AVX2); longer ones the incremental hasher. Large
/// batches are split into contiguous parts hashed on scoped threads (same output, in order).
pub fn keccak256_batch<M: AsRef<[u8]> + Sync>(msgs: &[M]) -> Vec<Hash> {
    let threads = cores();
    if msgs.len() < PARALLEL_MIN || threads < 2 {
        return keccak256_batch_serial(msgs);
    }
    let part = msgs.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = msgs
            .chunks(part)
            .map(|c| s.spawn(move || keccak256_batch_serial(c)))
            .collect();
        let mut out = Vec::with_capacity(msgs.len());
        for h in handles {
            match h.join() {
                Ok(v) => out.extend(v),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        out
    })
}

fn keccak256_batch_serial<M: AsRef<[u8]>>(msgs: &[M]) -> Vec<Hash> {
    let mut out = Vec::with_capacity(msgs.len());
    let mut rest = msgs;
    #[cfg(target_arch = "x86_64")]
    if msgs.iter().all(|m| m.as_ref().len() < RATE) && !force_portable() {
        if has_avx512() {
            while rest.len() >= 8 {
                let m = |i: usize| rest[i].as_ref();
                let eight = [m(0), m(1), m(2), m(3), m(4), m(5), m(6), m(7)];
                // SAFETY: AVX-512F support was checked above.
                out.extend(unsafe { avx512::hash8(eight) });
                rest = &rest[8..];
            }
        }
        while has_avx2() && rest.len() >= 4 {
            let four = [
                rest[0].as_ref(),
                rest[1].as_ref(),
                rest[2].as_ref(),
                rest[3].as_ref(),
            ];
            // SAFETY: AVX2 support was checked above.
            out.extend(unsafe { avx2::hash4(four) });
            rest = &rest[4..];
        }
    }
    out.extend(rest.iter().map(|m| keccak256_short(m.as_ref())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_large_batch_split_across_threads_is_the_same() {
        let msgs: Vec<[u8; 32]> = (0..PARALLEL_MIN as u32 + 12345)
            .map(|i| {
                let mut m = [0u8; 32];
                m[..4].copy_from_slice(&i.to_le_bytes());
                m
            })
            .collect();
        let want: Vec<Hash> = msgs.iter().map(|m| crate::hash::keccak256(m)).collect();
        assert_eq!(keccak256_batch(&msgs), want);
        assert_eq!(keccak256_batch_serial(&msgs), want);
    }

    proptest! {
        #[test]
        fn batch_equals_reference(msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..140), 0..11)) {
            let want: Vec<Hash> = msgs.iter().map(|m| crate::hash::keccak256(m)).collect();
            prop_assert_eq!(keccak256_batch(&msgs), want.clone());
            for (m, w) in msgs.iter().zip(&want) {
                prop_assert_eq!(keccak256_short(m), *w);
            }
        }
    }

    /// The pairs spelled out in `rho_pi!` are the standard rho/pi tables.
    #[test]
    fn rho_pi_tables() {
        // The walk from lane 1: position (x, y) -> (y, 2x + 3y), offsets (t+1)(t+2)/2 mod 64.
        let (mut x, mut y) = (1usize, 0usize);
        for t in 0..24 {
            let (nx, ny) = (y, (2 * x + 3 * y) % 5);
            assert_eq!(PI[t], nx + 5 * ny);
            assert_eq!(RHO[t], (((t + 1) * (t + 2) / 2) % 64) as u32);
            x = nx;
            y = ny;
        }
    }

    #[test]
    fn edge_lengths() {
        for len in [0usize, 1, 31, 32, 63, 64, 134, 135, 136, 137, 300] {
            let m: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let batch = keccak256_batch(&[m.clone(), m.clone(), m.clone(), m.clone(), m.clone()]);
            assert!(
                batch.iter().all(|h| *h == crate::hash::keccak256(&m)),
                "len {len}"
            );
        }
    }
}
