//! Splitting a kernel's output across threads.
//!
//! A run with `threads > 1` executes on a pool of exactly that many worker threads (one pool per thread
//! count, shared by every executor of the process, see [`pool`]): the run's own thread is one of them,
//! so single-threaded stretches between kernels never compete with idle workers for the cores. Kernels
//! split their output rows into at most `threads` contiguous parts and run the parts as tasks of that
//! pool, so a split costs a task hand-off, not a thread start. Each part computes exactly the integers
//! a single thread would: only who computes which rows changes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The shared pool of `threads` workers (`None` if the system refuses threads: the run then stays on
/// the calling thread and parts run on rayon's global pool).
pub(crate) fn pool(threads: usize) -> Option<Arc<rayon::ThreadPool>> {
    static POOLS: OnceLock<Mutex<BTreeMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS.get_or_init(Default::default).lock().ok()?;
    if let Some(p) = pools.get(&threads) {
        return Some(p.clone());
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("verity-exec-{threads}-{i}"))
        .build()
        .ok()?;
    let p = Arc::new(p);
    pools.insert(threads, p.clone());
    Some(p)
}

/// Runs `f` on the current pool worker while the pool's other `threads − 1` workers stay awake,
/// taking the parts of split kernels as soon as they appear instead of after a wake-up (which costs
/// as much as a small kernel); they go back to sleep when `f` returns. Only which thread computes
/// which part changes, never the integers.
pub(crate) fn awake<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    let done = std::sync::atomic::AtomicBool::new(false);
    let me = rayon::current_thread_index();
    rayon::scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| {
                // run by the caller's own thread (no other worker took it in time): return at once,
                // as spinning here would wait for `f`, which this thread has to finish
                if rayon::current_thread_index() == me {
                    return;
                }
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let r = f();
        done.store(true, std::sync::atomic::Ordering::Release);
        r
    })
}

/// Run `f(first_row, rows)` on consecutive parts of `data` (rows of `row_len` elements), at most
/// `threads` parts whose row counts are multiples of `align` (but the last), in parallel when there
/// are several. With `threads <= 1`, or a single part, `f` runs once on the calling thread.
pub(crate) fn rows<T: Send>(
    data: &mut [T],
    row_len: usize,
    threads: usize,
    align: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let total = data.len().checked_div(row_len).unwrap_or(0);
    let per = total.div_ceil(threads.max(1)).div_ceil(align.max(1)) * align.max(1);
    if threads <= 1 || per >= total || row_len == 0 {
        f(0, data);
        return;
    }
    each(data.chunks_mut(per * row_len).enumerate(), |(t, part)| {
        f(t * per, part)
    });
}

/// Run `f` on every one of `parts` in parallel, as tasks of the current pool; every part draws its
/// buffers from the run's pool (see [`crate::buffers`]) and takes the caller's instruction-set cap
/// (see [`crate::simd::Isa::cap`]), whichever worker runs it.
pub(crate) fn each<P: Send>(parts: impl IntoIterator<Item = P> + Send, f: impl Fn(P) + Sync) {
    let f = &f;
    let pool = crate::buffers::current();
    let pool = pool.as_ref();
    let cap = crate::simd::Isa::current_cap();
    rayon::scope(|s| {
        for part in parts {
            s.spawn(move |_| {
                crate::simd::Isa::within_cap(cap, || crate::buffers::within(pool, || f(part)))
            });
        }
    });
}

/// The first error any part reported (all parts run to their end; errors are kept, not raced on).
#[derive(Default)]
pub(crate) struct FirstError(std::sync::Mutex<Option<crate::ExecError>>);

impl FirstError {
    pub fn set(&self, e: crate::ExecError) {
        if let Ok(mut g) = self.0.lock() {
            g.get_or_insert(e);
        }
    }

    pub fn into_result(self) -> Result<(), crate::ExecError> {
        match self.0.into_inner() {
            Ok(Some(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

/// `len` copies of `value`, written by up to `threads` parts: zeroing a large buffer is work too, and a
/// split kernel's buffers would otherwise be filled by the one thread that allocates them.
/// The buffer comes from the current pool when it has one that fits (see [`crate::buffers`]).
pub(crate) fn filled<T: crate::buffers::Pooled>(len: usize, value: T, threads: usize) -> Vec<T> {
    // small buffers, or one thread: one fill (the allocator's own, calloc, for new zeros)
    if threads <= 1 || len < 1 << 16 {
        return crate::buffers::take(len, value);
    }
    let mut v: Vec<T> = crate::buffers::reuse(len).unwrap_or_else(|| Vec::with_capacity(len));
    v.clear();
    rows(
        &mut v.spare_capacity_mut()[..len],
        1,
        threads,
        1 << 12,
        |_, part| {
            for x in part {
                x.write(value);
            }
        },
    );
    // SAFETY: `rows` hands every element of the first `len` slots to exactly one part, which writes
    // it, so all `len` elements are initialized.
    unsafe { v.set_len(len) };
    v
}

#[cfg(test)]
mod tests {
    /// A part of a split kernel draws its buffers from the run's pool whichever worker runs it: on a
    /// pool of two workers, each of eight parts (long enough that the second worker takes some) finds
    /// one of the buffers the run's pool holds. (Tried again, up to 20 times, while every part happens
    /// to run on the run's own thread, as on a machine too busy to wake the second worker.)
    #[test]
    fn parts_on_other_workers_draw_from_the_runs_pool() {
        // (a pool of its own: the shared one may be busy with other tests' parts)
        let workers = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("two threads");
        let pool = std::sync::Arc::new(crate::buffers::Pool::default());
        let attempt = || {
            workers.install(|| {
                crate::buffers::scoped(&pool, || {
                    for _ in 0..8 {
                        crate::buffers::give(vec![0i32; 1 << 12]);
                    }
                    let found = std::sync::Mutex::new(Vec::new());
                    let mut rows = [0u8; 8];
                    super::rows(&mut rows, 1, 8, 1, |r0, _| {
                        let got = crate::buffers::reuse::<i32>(1 << 12).is_some();
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        let at = rayon::current_thread_index();
                        found.lock().expect("not poisoned").push((r0, at, got));
                    });
                    let me = rayon::current_thread_index();
                    (me, found.into_inner().expect("not poisoned"))
                })
            })
        };
        for _ in 0..20 {
            let (me, found) = attempt();
            assert_eq!(found.len(), 8);
            assert!(
                found.iter().all(|f| f.2),
                "a part found no pooled buffer: {found:?}"
            );
            if found.iter().any(|f| f.1 != me) {
                return;
            }
        }
        panic!("in 20 attempts no part ran on the pool's other worker");
    }

    /// A run's instruction-set cap is its thread's and goes with its parts: parts of a run capped at
    /// the baseline see the baseline on every worker (eight parts on two workers, tried until one ran
    /// on the other worker), a thread that caps itself changes no other thread's level, and a worker
    /// that ran capped parts is back at the CPU's level afterwards.
    #[test]
    fn parts_take_their_runs_instruction_set_cap_and_no_other_thread_does() {
        use crate::simd::Isa;
        let full = std::thread::spawn(Isa::detect).join().expect("a thread");
        let capped = std::thread::spawn(|| {
            Isa::cap(Isa::Base);
            Isa::detect()
        });
        assert_eq!(capped.join().expect("a thread"), Isa::Base);
        assert_eq!(
            Isa::detect(),
            full,
            "another thread's cap leaked into this one"
        );
        let workers = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("two threads");
        let seen = |cap: u8| {
            workers.install(|| {
                Isa::within_cap(cap, || {
                    let seen = std::sync::Mutex::new(Vec::new());
                    super::rows(&mut [0u8; 8], 1, 8, 1, |_, _| {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        let at = rayon::current_thread_index();
                        seen.lock().expect("not poisoned").push((at, Isa::detect()));
                    });
                    let me = rayon::current_thread_index();
                    (me, seen.into_inner().expect("not poisoned"))
                })
            })
        };
        for _ in 0..20 {
            let (me, parts) = seen(0);
            assert_eq!(parts.len(), 8);
            assert!(parts.iter().all(|p| p.1 == Isa::Base), "{parts:?}");
            let (_, after) = seen(2);
            assert!(after.iter().all(|p| p.1 == full), "{after:?}");
            if parts.iter().any(|p| p.0 != me) {
                return;
            }
        }
        panic!("in 20 attempts no part ran on the pool's other worker");
    }

    /// Every element of a buffer filled in parts holds the value, whatever the split.
    #[test]
    fn filled_buffers_hold_the_value_everywhere() {
        for threads in [1, 2, 3, 8] {
            for len in [0, 5, (1 << 16) - 1, 1 << 16, 200_003] {
                let v = super::filled(len, 0x5au8, threads);
                assert_eq!(v.len(), len);
                assert!(v.iter().all(|&x| x == 0x5a), "{threads} threads, {len}");
                let w = super::filled(len, -7i32, threads);
                assert!(w.len() == len && w.iter().all(|&x| x == -7));
            }
        }
    }
}
