//! One side of a bisection dispute over a committed trace (`docs/spec/disputes.md`): everything a
//! defender reveals and everything a challenger compares, computed from a model and that side's own trace.
//!
//! Trees are addressed from the root: the node at `level` (0 = root) and `index` (0 = leftmost); its
//! children are `(level + 1, 2·index)` and `(level + 1, 2·index + 1)`. Positions beyond the leaves are
//! padding and hash to zero. The *trace tree* has one leaf per input and node output (their elements
//! roots); a tensor's *word tree* has one leaf per 8 elements (`keccak256(word)`).

use std::collections::HashMap;
use std::sync::Mutex;

use verity_core::{
    merkle_proof, merkle_root, tree_depth, word_leaves, Hash, Keccak, ELEMENTS_PER_LEAF,
};

use crate::commit::trace_roots;
use crate::exec::Trace;
use crate::ir::{numel, Model};
use crate::onestep::{prove_step, StepError, StepWitness};
use crate::vty::{encode_const_desc, encode_header, leaves, list_root};

/// Every level of a padded Merkle tree: `levels[0]` the leaves, the last the root.
#[derive(Clone, Debug)]
pub struct Levels(Vec<Vec<Hash>>);

fn parent(l: &Hash, r: &Hash) -> Hash {
    let mut k = Keccak::new();
    k.update(&l.0);
    k.update(&r.0);
    k.finalize()
}

impl Levels {
    /// Build every level over `leaves`.
    pub fn new(leaves: Vec<Hash>) -> Levels {
        let depth = tree_depth(leaves.len());
        let mut levels = vec![leaves];
        for _ in 0..depth {
            let prev = levels.last().map(|v| v.as_slice()).unwrap_or(&[]);
            let next: Vec<Hash> = prev
                .chunks(2)
                .map(|p| parent(&p[0], p.get(1).unwrap_or(&Hash::ZERO)))
                .collect();
            levels.push(next);
        }
        Levels(levels)
    }

    /// Depth (levels below the root).
    pub fn depth(&self) -> usize {
        self.0.len() - 1
    }

    /// The node at `level` from the root and `index`; zero (padding) beyond the tree.
    pub fn node(&self, level: usize, index: u64) -> Hash {
        let d = self.depth();
        if level > d {
            return Hash::ZERO;
        }
        self.0[d - level]
            .get(index as usize)
            .copied()
            .unwrap_or(Hash::ZERO)
    }

    /// The two children of the node at (`level`, `index`).
    pub fn children(&self, level: usize, index: u64) -> (Hash, Hash) {
        (
            self.node(level + 1, 2 * index),
            self.node(level + 1, 2 * index + 1),
        )
    }

    /// The root (zero for no leaves).
    pub fn root(&self) -> Hash {
        self.0
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or(Hash::ZERO)
    }
}

/// The defender's first move: the header and trace tree, with the inputs' and outputs' elements roots and
/// their paths (outputs that are constants are proven inside the model instead, with their descriptor).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevealData {
    /// Model items.
    pub item_count: u64,
    /// Merkle root of the model items.
    pub item_root: Hash,
    /// Header item.
    pub header: Vec<u8>,
    /// Its path.
    pub header_path: Vec<Hash>,
    /// Merkle root of the trace's tensor roots.
    pub trace_tree: Hash,
    /// Inputs' roots, then outputs' roots.
    pub roots: Vec<Hash>,
    /// A path per root.
    pub paths: Vec<Vec<Hash>>,
    /// Per output: a constant's descriptor, else empty.
    pub descriptors: Vec<Vec<u8>>,
}

/// What a challenger knows of the defender's trace tree: its root and the children the defender revealed
/// along the bisection path, by (level, index). Every other node it needs lies wholly left of the disputed
/// leaf, where the two traces agree.
#[derive(Clone, Debug, Default)]
pub struct Revealed {
    /// The defender's trace tree root.
    pub root: Hash,
    /// Revealed nodes.
    pub nodes: HashMap<(usize, u64), Hash>,
}

impl Revealed {
    /// From the root and the defender's splits down the path to `leaf` in a tree of `depth`.
    pub fn from_splits(root: Hash, depth: usize, leaf: u64, splits: &[(Hash, Hash)]) -> Revealed {
        let mut nodes = HashMap::new();
        for (level, (l, r)) in splits.iter().enumerate().take(depth) {
            let p = leaf >> (depth - level);
            nodes.insert((level + 1, 2 * p), *l);
            nodes.insert((level + 1, 2 * p + 1), *r);
        }
        Revealed { root, nodes }
    }
}

/// A model with one side's trace, ready to answer any move of a dispute about it.
pub struct Side<'a> {
    model: &'a Model,
    trace: &'a Trace,
    items: Vec<Hash>,
    trace_levels: Levels,
    words: Mutex<HashMap<usize, std::sync::Arc<Levels>>>,
}

impl<'a> Side<'a> {
    /// One side: `trace` must be a run of `model`.
    pub fn new(model: &'a Model, trace: &'a Trace) -> Result<Side<'a>, StepError> {
        if trace.tensors.len() != model.inputs.len() + model.nodes.len() {
            return Err(StepError::Range(
                "trace does not belong to this model".into(),
            ));
        }
        Ok(Side {
            model,
            trace,
            items: leaves(model),
            trace_levels: Levels::new(trace_roots(trace)),
            words: Mutex::new(HashMap::new()),
        })
    }

    /// The trace root this side commits to.
    pub fn trace_root(&self) -> Hash {
        verity_core::bind_length(self.trace.tensors.len(), self.trace_levels.root())
    }

    /// The output hash this side commits to.
    pub fn output_hash(&self) -> Hash {
        let roots: Vec<Hash> = self
            .model
            .outputs
            .iter()
            .map(|o| verity_core::elements_root(self.value(o.value)))
            .collect();
        list_root(&roots)
    }

    fn value(&self, v: u32) -> &[i32] {
        crate::onestep::value_data(self.model, self.trace, v)
    }

    /// The trace tree.
    pub fn trace_tree(&self) -> &Levels {
        &self.trace_levels
    }

    /// The defender's first move.
    pub fn reveal(&self) -> RevealData {
        let ni = self.model.inputs.len();
        let nn = self.model.nodes.len();
        let troots = &self.trace_levels.0[0];
        let mut roots = Vec::new();
        let mut paths = Vec::new();
        let mut descriptors = Vec::new();
        for i in 0..ni {
            roots.push(troots[i]);
            paths.push(merkle_proof(troots, i).unwrap_or_default());
        }
        for o in &self.model.outputs {
            match self.model.trace_leaf(o.value) {
                Some(leaf) => {
                    roots.push(troots[leaf]);
                    paths.push(merkle_proof(troots, leaf).unwrap_or_default());
                    descriptors.push(Vec::new());
                }
                None => {
                    let c = o.value as usize - ni;
                    let k = &self.model.consts[c];
                    roots.push(k.data.root());
                    paths.push(merkle_proof(&self.items, 1 + nn + c).unwrap_or_default());
                    descriptors.push(encode_const_desc(k));
                }
            }
        }
        RevealData {
            item_count: self.items.len() as u64,
            item_root: merkle_root(&self.items),
            header: encode_header(self.model),
            header_path: merkle_proof(&self.items, 0).unwrap_or_default(),
            trace_tree: self.trace_levels.root(),
            roots,
            paths,
            descriptors,
        }
    }

    /// The tensor at trace leaf `leaf` (an input, or node `leaf − inputs`).
    pub fn tensor(&self, leaf: u64) -> &[i32] {
        self.trace
            .tensors
            .get(leaf as usize)
            .map(|t| t.as_slice())
            .unwrap_or(&[])
    }

    /// The word tree of trace leaf `leaf` (built once, then cached).
    pub fn word_tree(&self, leaf: u64) -> std::sync::Arc<Levels> {
        let mut cache = self.words.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(leaf as usize)
            .or_insert_with(|| std::sync::Arc::new(Levels::new(word_leaves(self.tensor(leaf)))))
            .clone()
    }

    /// The defender's opening of trace leaf `leaf`: element count and word-tree root.
    pub fn open(&self, leaf: u64) -> (u64, Hash) {
        (self.tensor(leaf).len() as u64, self.word_tree(leaf).root())
    }

    /// Word `index` of trace leaf `leaf` (zero beyond the tensor).
    pub fn word(&self, leaf: u64, index: u64) -> Hash {
        Hash(verity_core::merkle::pack_word(
            self.tensor(leaf),
            index as usize,
        ))
    }

    /// The challenger's choice against a defender's children (`true`: right): the leftmost child that
    /// differs from this side's own.
    pub fn choose(own: (Hash, Hash), theirs: (Hash, Hash)) -> bool {
        own.0 == theirs.0 && own.1 != theirs.1
    }

    /// The element of a revealed word (index `word_index` of trace leaf `leaf`, opened with `len`
    /// elements) that this side disputes: the first that differs from its own, or a non-zero padding
    /// element. `None` if the word is this side's own.
    pub fn disputed_element(
        &self,
        leaf: u64,
        len: u64,
        word_index: u64,
        theirs: &Hash,
    ) -> Option<u8> {
        let own = self.tensor(leaf);
        (0..ELEMENTS_PER_LEAF as u64).find_map(|j| {
            let e = word_index * ELEMENTS_PER_LEAF as u64 + j;
            let b = &theirs.0[4 * j as usize..4 * j as usize + 4];
            let their = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            let mine = if e < len {
                own.get(e as usize).copied()
            } else {
                Some(0)
            };
            (mine != Some(their)).then_some(j as u8)
        })
    }

    /// The one-step witness for element `element` of node `node` against the defender's trace (known
    /// through `theirs`): operands and words from this side's trace (which agrees with the defender's on
    /// every tensor before the disputed one), trace paths completed with the nodes the defender revealed.
    pub fn step_against(
        &self,
        node: usize,
        element: u64,
        theirs: &Revealed,
    ) -> Result<StepWitness, StepError> {
        let mut w = self.step(node, element)?;
        let d = self.trace_levels.depth();
        let inputs = self
            .model
            .nodes
            .get(node)
            .map(|n| n.inputs.clone())
            .unwrap_or_default();
        for (o, v) in w.operands.iter_mut().zip(inputs) {
            let Some(leaf) = self.model.trace_leaf(v) else {
                continue;
            };
            let leaf = leaf as u64;
            for (h, sib) in o.trace_path.iter_mut().enumerate() {
                let pos = (d - h, (leaf >> h) ^ 1);
                if let Some(x) = theirs.nodes.get(&pos) {
                    *sib = *x;
                }
            }
        }
        w.trace_tree = theirs.root;
        Ok(w)
    }

    /// The one-step witness for element `element` of node `node` from this side's trace. An element
    /// beyond the node's output gets the witness of element 0 naming the out-of-range element (the
    /// contract then reports the output's true length).
    pub fn step(&self, node: usize, element: u64) -> Result<StepWitness, StepError> {
        let n = self
            .model
            .nodes
            .get(node)
            .map(|n| numel(&n.shape))
            .ok_or_else(|| StepError::Range(format!("no node {node}")))?;
        if element < n {
            return Ok(prove_step(self.model, self.trace, node, element)?.0);
        }
        let (mut w, _) = prove_step(self.model, self.trace, node, 0)?;
        w.element = element;
        Ok(w)
    }
}
