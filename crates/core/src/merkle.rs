//! The binary keccak Merkle tree used for every commitment in Verity (model IDs, tensors, traces).
//!
//! Rules (see `docs/spec/canonical.md`, "Commitments"):
//! - The tree is built level by level: an inner node is `keccak256(left ‖ right)`, and a node without a
//!   partner at the end of a level is paired with [`Hash::ZERO`] (so a subtree of padding counts as
//!   `Hash::ZERO`); the root of one leaf is that leaf; the root of zero leaves is `Hash::ZERO`.
//! - A tensor of `i32` elements is packed row-major into 32-byte words, 8 elements per word, each element
//!   big-endian two's complement, the last word zero-padded. A word's leaf is `keccak256(word)`.
//!   The tensor's *elements root* is `keccak256(u64_be(len) ‖ merkle_root(leaves))`.

use crate::hash::{keccak256, Hash, Keccak};
use crate::keccak_batch::keccak256_batch;

/// Number of `i32` elements packed in one 32-byte leaf word.
pub const ELEMENTS_PER_LEAF: usize = 8;

fn parent(l: &Hash, r: &Hash) -> Hash {
    let mut k = Keccak::new();
    k.update(&l.0);
    k.update(&r.0);
    k.finalize()
}

/// The parents of one tree level (an odd last node is paired with the zero hash).
fn next_level(level: &[Hash]) -> Vec<Hash> {
    let pairs: Vec<[u8; 64]> = level
        .chunks(2)
        .map(|pair| {
            let mut m = [0u8; 64];
            m[..32].copy_from_slice(&pair[0].0);
            m[32..].copy_from_slice(&pair.get(1).unwrap_or(&Hash::ZERO).0);
            m
        })
        .collect();
    keccak256_batch(&pairs)
}

/// Merkle root of `leaves` (an unpaired node at the end of a level is paired with the zero hash).
pub fn merkle_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Hash::ZERO,
        1 => leaves[0],
        _ => {
            let mut level: Vec<Hash> = leaves.to_vec();
            while level.len() > 1 {
                level = next_level(&level);
            }
            level[0]
        }
    }
}

/// The sibling path for leaf `index`, bottom-up. Returns `None` if `index` is out of range.
pub fn merkle_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut path = Vec::new();
    let mut level: Vec<Hash> = leaves.to_vec();
    let mut i = index;
    while level.len() > 1 {
        let sib = i ^ 1;
        path.push(level.get(sib).copied().unwrap_or(Hash::ZERO));
        level = next_level(&level);
        i /= 2;
    }
    Some(path)
}

/// Check that `leaf` sits at `index` under `root` with sibling path `path` (bottom-up).
pub fn verify_proof(leaf: Hash, index: usize, path: &[Hash], root: Hash) -> bool {
    if path.len() < usize::BITS as usize && index >> path.len() != 0 {
        return false;
    }
    fold_path(leaf, index, path) == root
}

/// Hash `leaf` up through its bottom-up sibling `path`; bit `k` of `index` says which side it is on.
fn fold_path(leaf: Hash, index: usize, path: &[Hash]) -> Hash {
    let mut acc = leaf;
    let mut i = index;
    for sib in path {
        acc = if i & 1 == 0 {
            parent(&acc, sib)
        } else {
            parent(sib, &acc)
        };
        i >>= 1;
    }
    acc
}

/// Pack elements `8*w .. 8*w+8` into word `w` (big-endian, zero padded).
pub fn pack_word(elems: &[i32], w: usize) -> [u8; 32] {
    let mut word = [0u8; 32];
    let start = w * ELEMENTS_PER_LEAF;
    for (j, e) in elems.iter().skip(start).take(ELEMENTS_PER_LEAF).enumerate() {
        word[4 * j..4 * j + 4].copy_from_slice(&e.to_be_bytes());
    }
    word
}

fn element_leaves(elems: &[i32]) -> Vec<Hash> {
    let words: Vec<[u8; 32]> = elems
        .chunks(ELEMENTS_PER_LEAF)
        .map(|c| {
            let mut word = [0u8; 32];
            for (j, e) in c.iter().enumerate() {
                word[4 * j..4 * j + 4].copy_from_slice(&e.to_be_bytes());
            }
            word
        })
        .collect();
    keccak256_batch(&words)
}

fn bind_len(len: usize, tree: Hash) -> Hash {
    let mut k = Keccak::new();
    k.update(&(len as u64).to_be_bytes());
    k.update(&tree.0);
    k.finalize()
}

/// Leaves hashed at a time by [`elements_root`] (a power of two): a large tensor's tree is built from
/// the roots of aligned subtrees of this many leaves, so no more than one subtree's words and leaves
/// are held at once (a language model's 28M-element embedding table took 4 bytes of leaves per element,
/// and as much again for the words and the first levels, all at once).
const SUBTREE_LEAVES: usize = 1 << 14;

/// The elements root of a flat row-major `i32` tensor.
pub fn elements_root(elems: &[i32]) -> Hash {
    elements_root_of(elems.len(), |r, hash| hash(&elems[r]))
}

/// [`elements_root`] of a tensor of `len` elements that `visit(range, hash)` hands over a run at a time,
/// calling `hash` with the elements `range` (so a tensor held in another form, e.g. narrower integers,
/// is widened a run at a time into one buffer).
pub fn elements_root_of(
    len: usize,
    mut visit: impl FnMut(std::ops::Range<usize>, &mut dyn FnMut(&[i32])),
) -> Hash {
    let per = SUBTREE_LEAVES * ELEMENTS_PER_LEAF;
    let mut leaves_of = |r: std::ops::Range<usize>| {
        let mut leaves = Vec::new();
        visit(r, &mut |elems| leaves = element_leaves(elems));
        leaves
    };
    if len <= per {
        return bind_len(len, merkle_root(&leaves_of(0..len)));
    }
    // Level k = log2(SUBTREE_LEAVES) of the whole tree, one node per aligned run of leaves: a full run's
    // root, and for a short last run its own root carried up the levels it lacks, paired with the zero
    // hash at each (the tree's rule for a last node without a partner). Above level k the tree is built
    // from those nodes by the same rule.
    let k = SUBTREE_LEAVES.trailing_zeros();
    let level_k: Vec<Hash> = (0..len)
        .step_by(per)
        .map(|start| {
            let leaves = leaves_of(start..(start + per).min(len));
            let mut node = merkle_root(&leaves);
            for _ in leaves.len().next_power_of_two().trailing_zeros()..k {
                node = parent(&node, &Hash::ZERO);
            }
            node
        })
        .collect();
    bind_len(len, merkle_root(&level_k))
}

/// A proof that one element of a tensor has a given value, against the tensor's elements root.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ElementProof {
    /// Number of elements in the tensor.
    pub len: u64,
    /// Index of the element (row-major).
    pub index: u64,
    /// The 32-byte word holding the element and its 7 neighbours.
    pub word: Hash,
    /// Sibling path of the word's leaf, bottom-up.
    pub path: Vec<Hash>,
}

impl ElementProof {
    /// Build the proof for element `index` of `elems`.
    pub fn new(elems: &[i32], index: usize) -> Option<ElementProof> {
        if index >= elems.len() {
            return None;
        }
        let leaves = element_leaves(elems);
        let w = index / ELEMENTS_PER_LEAF;
        Some(ElementProof {
            len: elems.len() as u64,
            index: index as u64,
            word: Hash(pack_word(elems, w)),
            path: merkle_proof(&leaves, w)?,
        })
    }

    /// The element value this proof carries.
    pub fn value(&self) -> i32 {
        let j = (self.index as usize % ELEMENTS_PER_LEAF) * 4;
        let b = &self.word.0[j..j + 4];
        i32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
}

/// Depth of the padded tree over `n` leaves.
pub fn tree_depth(n: usize) -> usize {
    if n <= 1 {
        0
    } else {
        (usize::BITS - (n - 1).leading_zeros()) as usize
    }
}

/// The root reached from `leaf` at `index` through `path`, if the path has exactly the depth of a tree
/// of `n` leaves and `index < n`.
pub fn root_from_path(leaf: Hash, index: usize, n: usize, path: &[Hash]) -> Option<Hash> {
    if index >= n || path.len() != tree_depth(n) {
        return None;
    }
    Some(fold_path(leaf, index, path))
}

/// Siblings that prove several leaves of one tree at once (a *multiproof*), in the order
/// [`multiproof_root`] consumes them: level by level from the leaves up, left to right, one hash for every
/// node whose sibling is neither known (a proven leaf or a node computed from them) nor padding.
/// `indices` must be strictly increasing and below `leaves.len()`; otherwise `None`.
pub fn multiproof(leaves: &[Hash], indices: &[usize]) -> Option<Vec<Hash>> {
    if indices.is_empty() || indices.windows(2).any(|w| w[0] >= w[1]) {
        return None;
    }
    if *indices.last()? >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    let mut level: Vec<Hash> = leaves.to_vec();
    let mut known: Vec<usize> = indices.to_vec();
    while level.len() > 1 {
        let mut i = 0;
        let mut next = Vec::with_capacity(known.len());
        while i < known.len() {
            let idx = known[i];
            if idx.is_multiple_of(2) && known.get(i + 1) == Some(&(idx + 1)) {
                i += 2;
            } else {
                let sib = idx ^ 1;
                if sib < level.len() {
                    proof.push(level[sib]);
                }
                i += 1;
            }
            next.push(idx / 2);
        }
        known = next;
        level = next_level(&level);
    }
    Some(proof)
}

/// The root of a tree of `width` leaves in which the leaves `items` (index, hash; strictly increasing
/// indices) are proven by `proof` (from [`multiproof`]). `None` if the items are malformed or the proof has
/// the wrong number of hashes. The Solidity `Merkle.multiRoot` computes exactly this.
pub fn multiproof_root(width: usize, items: &[(usize, Hash)], proof: &[Hash]) -> Option<Hash> {
    if items.is_empty() || items.windows(2).any(|w| w[0].0 >= w[1].0) {
        return None;
    }
    if items.last()?.0 >= width {
        return None;
    }
    let mut level: Vec<(usize, Hash)> = items.to_vec();
    let mut width = width;
    let mut p = 0;
    while width > 1 {
        let mut next = Vec::with_capacity(level.len());
        let mut i = 0;
        while i < level.len() {
            let (idx, h) = level[i];
            let parent_hash = if idx.is_multiple_of(2) {
                let sib = if level.get(i + 1).map(|x| x.0) == Some(idx + 1) {
                    i += 1;
                    level[i].1
                } else if idx + 1 >= width {
                    Hash::ZERO
                } else {
                    p += 1;
                    *proof.get(p - 1)?
                };
                parent(&h, &sib)
            } else {
                p += 1;
                parent(proof.get(p - 1)?, &h)
            };
            i += 1;
            next.push((idx / 2, parent_hash));
        }
        level = next;
        width = width.div_ceil(2);
    }
    (p == proof.len()).then_some(level[0].1)
}

/// The leaf of word `w` of a tensor: `keccak256(word)`.
pub fn word_leaf(elems: &[i32], w: usize) -> Hash {
    keccak256(&pack_word(elems, w))
}

/// The word leaves of a tensor (for proofs over many of its elements).
pub fn word_leaves(elems: &[i32]) -> Vec<Hash> {
    element_leaves(elems)
}

/// `keccak256(u64_be(len) ‖ tree)`: an elements root from its length and Merkle root.
pub fn bind_length(len: usize, tree: Hash) -> Hash {
    bind_len(len, tree)
}

impl ElementProof {
    /// The elements root this proof leads to, if it is well-formed.
    pub fn root(&self) -> Option<Hash> {
        if self.index >= self.len {
            return None;
        }
        let words = (self.len as usize).div_ceil(ELEMENTS_PER_LEAF);
        let w = (self.index as usize) / ELEMENTS_PER_LEAF;
        let tree = root_from_path(keccak256(&self.word.0), w, words, &self.path)?;
        Some(bind_len(self.len as usize, tree))
    }
}

/// Verify an element proof against an elements root; returns the proven value.
pub fn verify_element(proof: &ElementProof, root: Hash) -> Option<i32> {
    (proof.root()? == root).then(|| proof.value())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_trees() {
        assert_eq!(merkle_root(&[]), Hash::ZERO);
        let a = keccak256(b"a");
        let b = keccak256(b"b");
        let c = keccak256(b"c");
        assert_eq!(merkle_root(&[a]), a);
        assert_eq!(merkle_root(&[a, b]), parent(&a, &b));
        assert_eq!(
            merkle_root(&[a, b, c]),
            parent(&parent(&a, &b), &parent(&c, &Hash::ZERO))
        );
    }

    #[test]
    fn packing_is_big_endian() {
        let w = pack_word(&[1, -1, 0x01020304], 0);
        assert_eq!(&w[0..4], &[0, 0, 0, 1]);
        assert_eq!(&w[4..8], &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(&w[8..12], &[1, 2, 3, 4]);
        assert_eq!(&w[12..], &[0u8; 20]);
    }

    #[test]
    fn subtree_roots_give_the_whole_trees_root() {
        // the whole tree built level by level, as the rules in the module's doc say
        let whole = |elems: &[i32]| bind_len(elems.len(), merkle_root(&element_leaves(elems)));
        let per = SUBTREE_LEAVES * ELEMENTS_PER_LEAF;
        let mut x = 0x9e37_79b9_u32;
        let data: Vec<i32> = (0..4 * per + 3 * ELEMENTS_PER_LEAF + 5)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as i32
            })
            .collect();
        for n in [
            0,
            1,
            per - 1,
            per,
            per + 1,
            per + ELEMENTS_PER_LEAF,
            per + 2 * ELEMENTS_PER_LEAF + 1,
            2 * per,
            2 * per + 7,
            3 * per,
            3 * per + per / 2,
            4 * per + 3 * ELEMENTS_PER_LEAF + 5,
        ] {
            assert_eq!(elements_root(&data[..n]), whole(&data[..n]), "{n} elements");
        }
    }

    #[test]
    fn length_is_bound() {
        // A trailing zero element changes the root even though the packed words are equal.
        assert_ne!(elements_root(&[5, 6]), elements_root(&[5, 6, 0]));
    }

    proptest! {
        #[test]
        fn proofs_verify_and_tampering_fails(elems in prop::collection::vec(any::<i32>(), 1..200), pick in any::<usize>()) {
            let root = elements_root(&elems);
            let i = pick % elems.len();
            let p = ElementProof::new(&elems, i).unwrap();
            prop_assert_eq!(verify_element(&p, root), Some(elems[i]));
            let mut bad = p.clone();
            bad.word.0[(i % 8) * 4 + 3] ^= 1;
            prop_assert_eq!(verify_element(&bad, root), None);
            let mut bad = p.clone();
            bad.len += 1;
            prop_assert_eq!(verify_element(&bad, root), None);
        }

        #[test]
        fn multiproofs_verify(n in 1usize..90, picks in prop::collection::btree_set(any::<usize>(), 1..12)) {
            let leaves: Vec<Hash> = (0..n).map(|i| keccak256(&i.to_be_bytes())).collect();
            let root = merkle_root(&leaves);
            let idx: Vec<usize> = picks.iter().map(|p| p % n).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            let proof = multiproof(&leaves, &idx).unwrap();
            let items: Vec<(usize, Hash)> = idx.iter().map(|&i| (i, leaves[i])).collect();
            prop_assert_eq!(multiproof_root(n, &items, &proof), Some(root));
            // a changed leaf, a missing or extra sibling, or a moved index fails
            let mut bad = items.clone();
            bad[0].1 = keccak256(b"x");
            prop_assert_ne!(multiproof_root(n, &bad, &proof), Some(root));
            if !proof.is_empty() {
                prop_assert_eq!(multiproof_root(n, &items, &proof[1..]), None);
            }
            let mut longer = proof.clone();
            longer.push(Hash::ZERO);
            prop_assert_eq!(multiproof_root(n, &items, &longer), None);
            // one index alone gives exactly the single-leaf path minus padding siblings
            let single = multiproof(&leaves, &idx[..1]).unwrap();
            prop_assert_eq!(multiproof_root(n, &items[..1], &single), Some(root));
        }

        #[test]
        fn generic_proofs(n in 1usize..70, pick in any::<usize>()) {
            let leaves: Vec<Hash> = (0..n).map(|i| keccak256(&i.to_be_bytes())).collect();
            let root = merkle_root(&leaves);
            let i = pick % n;
            let p = merkle_proof(&leaves, i).unwrap();
            prop_assert!(verify_proof(leaves[i], i, &p, root));
            prop_assert!(!verify_proof(leaves[(i + 1) % n], i, &p, root) || n == 1);
        }
    }
}
