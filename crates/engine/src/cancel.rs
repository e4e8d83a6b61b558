//! Cooperative cancellation of a run. A server that gives up on a request (its client left, its deadline
//! passed, the process is stopping) sets the run's [`Cancel`] token; the executor checks it between nodes,
//! and the long kernels check it between row blocks and skip their remaining work, so the run ends with
//! [`crate::ExecError::Cancelled`] within about one block's time. A cancelled run returns no output, so
//! the work skipped inside a node is never seen.
//!
//! The token is installed for the current thread with [`scope`]; kernels that split work across threads
//! take it along.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A shared cancellation flag.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token not yet cancelled.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Ask every run under this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

thread_local! {
    static CURRENT: RefCell<Vec<Cancel>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with `token` installed on this thread (nested scopes stack; any one cancelled stops the run).
pub fn scope<R>(token: &Cancel, f: impl FnOnce() -> R) -> R {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            CURRENT.with(|c| {
                c.borrow_mut().pop();
            });
        }
    }
    CURRENT.with(|c| c.borrow_mut().push(token.clone()));
    let _pop = Pop;
    f()
}

/// Run `f` with exactly `tokens` installed on this thread, then restore what was installed before (for a
/// run carried onto a worker thread of a pool, which may interleave other runs' work on its stack).
pub(crate) fn with_tokens<R>(tokens: Vec<Cancel>, f: impl FnOnce() -> R) -> R {
    struct Restore(Vec<Cancel>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = std::mem::take(&mut self.0);
            CURRENT.with(|c| *c.borrow_mut() = before);
        }
    }
    let _restore = Restore(CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), tokens)));
    f()
}

/// The tokens installed on this thread (to carry into threads a kernel spawns).
pub(crate) fn current() -> Vec<Cancel> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Whether the run on this thread has been cancelled.
pub fn requested() -> bool {
    CURRENT.with(|c| c.borrow().iter().any(Cancel::is_cancelled))
}

/// Whether any of `tokens` has been cancelled (for threads a kernel spawned).
pub(crate) fn any(tokens: &[Cancel]) -> bool {
    tokens.iter().any(Cancel::is_cancelled)
}
