//! The ReceiptCourt's calldata: a receipt's input as the court hashes it (`docs/spec/economics.md`).
//!
//! A dispute over a receipt carries the input in calldata, each tensor as its element count and its
//! words (eight big-endian `i32` elements per 32-byte word, zero padded, as in the trace); the court
//! hashes them to the canonical input hash (`verity_engine::commit::tensors_hash`) and refuses a dispute
//! whose input is not the receipt's.

use alloy::primitives::B256;
use verity_core::merkle::pack_word;

/// Element counts and words of each input tensor, as `ReceiptCourt.disputeReceipt` takes them.
pub fn input_words(tensors: &[Vec<i32>]) -> (Vec<u64>, Vec<Vec<B256>>) {
    let lens = tensors.iter().map(|t| t.len() as u64).collect();
    let words = tensors
        .iter()
        .map(|t| {
            (0..t.len().div_ceil(8))
                .map(|w| B256::from(pack_word(t, w)))
                .collect()
        })
        .collect();
    (lens, words)
}

/// The tensors back from their words (what a node defending a dispute reads from `ReceiptDisputed`).
/// None if a tensor's word count does not match its length.
pub fn tensors_of(lens: &[u64], words: &[Vec<B256>]) -> Option<Vec<Vec<i32>>> {
    if lens.len() != words.len() {
        return None;
    }
    lens.iter()
        .zip(words)
        .map(|(&n, ws)| {
            let n = usize::try_from(n).ok()?;
            if ws.len() != n.div_ceil(8) {
                return None;
            }
            Some(
                (0..n)
                    .map(|i| {
                        let b = &ws[i / 8].0[4 * (i % 8)..4 * (i % 8) + 4];
                        i32::from_be_bytes([b[0], b[1], b[2], b[3]])
                    })
                    .collect(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden vector `contracts/test/Adversarial.t.sol` hashes on-chain: one tensor [1, 2, …, 9].
    #[test]
    fn nine_elements_hash_as_the_court_hashes_them() {
        let t = vec![(1..=9).collect::<Vec<i32>>()];
        let h = verity_engine::commit::tensors_hash(&t);
        assert_eq!(
            h.to_string(),
            "0xaa5f26c6a4a805f76bb61527b990cff348cb31fe44587673dcfb9da4d607b4e4"
        );
        let (lens, words) = input_words(&t);
        assert_eq!(lens, vec![9]);
        assert_eq!(words[0].len(), 2);
        assert_eq!(words[0][1].0[..4], 9i32.to_be_bytes());
        assert_eq!(tensors_of(&lens, &words).unwrap(), t);
        let neg = vec![vec![-1, i32::MIN, i32::MAX]];
        let (l, w) = input_words(&neg);
        assert_eq!(tensors_of(&l, &w).unwrap(), neg);
        assert!(tensors_of(&[9], &[vec![]]).is_none());
    }
}
