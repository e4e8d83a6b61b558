//! What a node does beyond answering a request: take part on the chain (`chain`), replicate models
//! between nodes (`replicate`), coordinate quorums (`quorum`), and play and watch optimistic mode
//! (`optimistic`). Each works on the shared state (`crate::state`).

pub mod chain;
pub mod optimistic;
pub mod quorum;
pub mod replicate;
