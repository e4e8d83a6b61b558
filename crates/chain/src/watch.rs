//! Reorg-aware hub event watching by polling: survives RPC reconnects (every poll is a fresh request, and
//! the cursor is the caller's to persist) and reorganisations (each poll first checks that the last
//! processed block is still on the chain; if not, it walks back to the newest checkpoint that is and
//! reports a [`WatchItem::Reorg`] before delivering the replacement blocks' events again).

use serde::{Deserialize, Serialize};
use verity_core::Hash;

use crate::{Chain, ChainError, HubEvent};

/// How many processed-block checkpoints are kept for finding a fork point.
const CHECKPOINTS: usize = 128;

/// The watcher's cursor; persist it together with whatever the events changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatcherState {
    /// Next block to read.
    pub next: u64,
    /// (block, hash) of processed blocks, oldest first.
    pub checkpoints: Vec<(u64, Hash)>,
}

/// What a poll found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// Blocks from `from` on were replaced: forget what they said; their replacements follow.
    Reorg {
        /// First block no longer valid.
        from: u64,
    },
    /// Events of the blocks read, in chain order.
    Events(Vec<HubEvent>),
}

/// Polls a [`Chain`] for hub events.
#[derive(Debug, Clone)]
pub struct Watcher {
    /// The cursor.
    pub state: WatcherState,
    /// At most this many blocks per poll.
    pub batch: u64,
    /// Stay this many blocks behind the head (0 on a devnet; reorgs are handled either way).
    pub confirmations: u64,
}

impl Watcher {
    /// Start at block `from` (e.g. the deployment block) or resume from a saved state.
    pub fn new(from: u64, saved: Option<WatcherState>) -> Watcher {
        Watcher {
            state: saved.unwrap_or(WatcherState {
                next: from,
                checkpoints: vec![],
            }),
            batch: 2000,
            confirmations: 0,
        }
    }

    /// One poll: reorg check, then the events of up to `batch` new blocks.
    pub async fn poll<C: Chain>(&mut self, chain: &C) -> Result<Vec<WatchItem>, ChainError> {
        let mut items = Vec::new();
        if let Some(&(n, h)) = self.state.checkpoints.last() {
            if chain.block_hash(n).await? != Some(h) {
                // Walk back to the newest checkpoint still on the chain.
                let mut keep = 0;
                for i in (0..self.state.checkpoints.len()).rev() {
                    let (cn, ch) = self.state.checkpoints[i];
                    if chain.block_hash(cn).await? == Some(ch) {
                        keep = i + 1;
                        break;
                    }
                }
                let from = if keep == 0 {
                    // Deeper than every checkpoint: restart from just after the oldest one we knew.
                    self.state
                        .checkpoints
                        .first()
                        .map(|c| c.0.saturating_sub(CHECKPOINTS as u64))
                        .unwrap_or(0)
                } else {
                    self.state.checkpoints[keep - 1].0 + 1
                };
                self.state.checkpoints.truncate(keep);
                self.state.next = from.min(self.state.next);
                items.push(WatchItem::Reorg {
                    from: self.state.next,
                });
            }
        }
        let head = chain.head().await?;
        let target = head.number.saturating_sub(self.confirmations);
        if self.state.next > target {
            return Ok(items);
        }
        let to = target.min(self.state.next + self.batch - 1);
        let events = chain.hub_events(self.state.next, to).await?;
        let Some(to_hash) = chain.block_hash(to).await? else {
            return Ok(items);
        };
        // Logs and the checkpoint must come from the same chain; if a reorg slipped in between, retry later.
        if events
            .iter()
            .any(|e| e.block == to && e.block_hash != to_hash)
        {
            return Ok(items);
        }
        self.state.checkpoints.push((to, to_hash));
        if self.state.checkpoints.len() > CHECKPOINTS {
            let extra = self.state.checkpoints.len() - CHECKPOINTS;
            self.state.checkpoints.drain(..extra);
        }
        self.state.next = to + 1;
        if !events.is_empty() {
            items.push(WatchItem::Events(events));
        }
        Ok(items)
    }
}
