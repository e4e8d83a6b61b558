//! Working buffers reused across an executor's runs.
//!
//! An executor owns a [`Pool`]. While it evaluates a model the pool is the calling thread's current
//! one ([`scoped`]): kernels draw their large output and scratch buffers from it ([`take`]) and give
//! scratch buffers back when done ([`give`]); the executor gives back every intermediate tensor after
//! the last node that reads it (model inputs go back to the allocator, outputs to the caller). After
//! its first run a steady stream of runs of one model thus allocates nothing large but its outputs:
//! every buffer it needs is already mapped in the pool, the most recently given (likeliest still in
//! the cache) first.
//!
//! Only where a buffer's memory comes from changes, never what a kernel reads: [`take`] hands out
//! `len` copies of the value asked for, like `vec![value; len]`. Buffers below [`MIN_BYTES`] are left to
//! the allocator, and a pool keeps at most [`MAX_KEPT`] buffers of each element type (beyond that the
//! smallest go back to the allocator), so what it holds is bounded by what one run had freed at once.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

/// Buffers smaller than this many bytes are not pooled (the allocator's own free lists serve them).
pub const MIN_BYTES: usize = 4 << 10;

/// How many free buffers of one element type a pool keeps at most.
pub const MAX_KEPT: usize = 48;

/// Free buffers, by element type, each list in the order they were given.
#[derive(Default)]
pub struct Pool {
    i32s: Mutex<Vec<Vec<i32>>>,
    u8s: Mutex<Vec<Vec<u8>>>,
    i8s: Mutex<Vec<Vec<i8>>>,
    i64s: Mutex<Vec<Vec<i64>>>,
    i16s: Mutex<Vec<Vec<i16>>>,
}

impl Pool {
    fn keep<T: Pooled>(&self, v: Vec<T>) {
        if v.capacity() * std::mem::size_of::<T>() < MIN_BYTES {
            return;
        }
        let Ok(mut list) = T::list(self).lock() else {
            return;
        };
        list.push(v);
        if list.len() > MAX_KEPT {
            // the smallest (of those, the longest unused) goes back to the allocator: a stream of
            // small buffers made outside the pool must not push out the large ones, which are the
            // costly ones to map and zero again
            let smallest = (0..list.len())
                .min_by_key(|&i| list[i].capacity())
                .unwrap_or(0);
            list.remove(smallest);
        }
    }

    /// The most recently given free buffer (the likeliest still in the cache) holding at least `len`
    /// elements and at most twice as many (a much larger one stays for a request of its size).
    fn find<T: Pooled>(&self, len: usize) -> Option<Vec<T>> {
        if len * std::mem::size_of::<T>() < MIN_BYTES {
            return None;
        }
        let mut list = T::list(self).lock().ok()?;
        let at = list
            .iter()
            .rposition(|b| (len..=2 * len).contains(&b.capacity()))?;
        Some(list.remove(at))
    }
}

/// Element types a pool keeps buffers of.
pub trait Pooled: Copy + Default + Send + Sync + 'static {
    /// Whether `v` is the value whose bytes are all zero.
    fn is_zero(v: Self) -> bool;
    /// What [`take_overwritten`] fills its buffers with in debug builds (bytes `0x5a`), so that a
    /// kernel which misses an element shows it in tests instead of reading a zero by luck.
    fn poison() -> Self;
    #[doc(hidden)]
    fn list(pool: &Pool) -> &Mutex<Vec<Vec<Self>>>;
}

/// `Pooled` for an integer type whose free buffers the pool keeps in `field`.
macro_rules! pooled {
    ($($t:ty => $field:ident),* $(,)?) => {$(
        impl Pooled for $t {
            fn is_zero(v: $t) -> bool {
                v == 0
            }
            fn poison() -> $t {
                <$t>::from_ne_bytes([0x5a; std::mem::size_of::<$t>()])
            }
            fn list(pool: &Pool) -> &Mutex<Vec<Vec<$t>>> {
                &pool.$field
            }
        }
    )*};
}

pooled!(i32 => i32s, u8 => u8s, i8 => i8s, i16 => i16s, i64 => i64s);

thread_local! {
    static CURRENT: RefCell<Option<Arc<Pool>>> = const { RefCell::new(None) };
}

/// Run `f` with `pool` as this thread's current pool (the previous one is current again afterwards,
/// also if `f` panics).
pub fn scoped<R>(pool: &Arc<Pool>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<Pool>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = prev);
        }
    }
    let prev = CURRENT.with(|c| c.borrow_mut().replace(pool.clone()));
    let _restore = Restore(prev);
    f()
}

/// The calling thread's current pool, to be carried into the parts a kernel splits off
/// ([`within`]).
pub(crate) fn current() -> Option<Arc<Pool>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Run `f` with `pool` current (as [`scoped`]), or as it is without one: a part of a split kernel,
/// run by another worker, takes its buffers from the run's pool as the run's own thread does.
pub(crate) fn within<R>(pool: Option<&Arc<Pool>>, f: impl FnOnce() -> R) -> R {
    match pool {
        Some(p) => scoped(p, f),
        None => f(),
    }
}

/// `len` copies of `value` in a buffer from the current pool (or a new one).
pub fn take<T: Pooled>(len: usize, value: T) -> Vec<T> {
    match current().and_then(|p| p.find::<T>(len)) {
        Some(mut v) => {
            v.clear();
            if T::is_zero(value) {
                // SAFETY: `find` gave a buffer with room for `len` elements; the integer types a pool
                // holds are valid as all-zero bytes, so after the fill all `len` are initialized
                unsafe {
                    std::ptr::write_bytes(v.as_mut_ptr(), 0, len);
                    v.set_len(len);
                }
            } else {
                v.resize(len, value);
            }
            v
        }
        None => vec![value; len],
    }
}

/// `len` elements for a caller that writes every one of them before anything reads them: a buffer of
/// the current pool as it is (its elements whatever it held; only a part it never held is zeroed), or
/// new zeros. Only the fill is saved, so a caller that missed an element would read an earlier run's
/// value: for kernels whose loops store every output element (debug builds fill the buffer with
/// [`Pooled::poison`] instead, so that tests catch a kernel that does not).
pub fn take_overwritten<T: Pooled>(len: usize) -> Vec<T> {
    let mut v = match reuse::<T>(len) {
        Some(mut v) => {
            v.truncate(len);
            v.resize(len, T::default());
            v
        }
        None => vec![T::default(); len],
    };
    if cfg!(debug_assertions) {
        v.fill(T::poison());
    }
    v
}

/// A free buffer of the current pool with room for `len` elements of `T` (its length and elements
/// unspecified), for a caller that fills it itself.
pub fn reuse<T: Pooled>(len: usize) -> Option<Vec<T>> {
    current().and_then(|p| p.find::<T>(len))
}

/// Give a buffer no one reads any more to the current pool (or back to the allocator without one).
pub fn give<T: Pooled>(v: Vec<T>) {
    if let Some(p) = current() {
        p.keep(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_filled_and_the_pool_stays_bounded() {
        let pool = Arc::new(Pool::default());
        scoped(&pool, || {
            let n = MIN_BYTES / 4 + 10;
            let mut a = take(n, 0i32);
            a.iter_mut().enumerate().for_each(|(i, x)| *x = i as i32);
            let ptr = a.as_ptr();
            give(a);
            // the same memory, refilled
            let b = take(n - 5, 7i32);
            assert_eq!(b.as_ptr(), ptr);
            assert!(b.len() == n - 5 && b.iter().all(|&x| x == 7));
            give(b);
            // too large a buffer for a small request stays in the pool
            let c = take(n / 3, 1i32);
            assert_ne!(c.as_ptr(), ptr);
            assert!(c.iter().all(|&x| x == 1));
            let d = take(n - 1, 2i32);
            assert_eq!((d.as_ptr(), d.len()), (ptr, n - 1));
            give(d);
            // zeros over the 2s (filled as bytes)
            let z = take(n, 0i32);
            assert_eq!((z.as_ptr(), z.len()), (ptr, n));
            assert!(z.iter().all(|&x| x == 0));
            give(z);
            let e = reuse::<i32>(n).map(|e| (e.as_ptr(), e.capacity()));
            assert_eq!(e, Some((ptr, n)));
            // small buffers are not kept
            give(vec![0u8; 100]);
            assert_eq!(pool.u8s.lock().map(|l| l.len()).unwrap_or(9), 0);
            for i in 0..MAX_KEPT + 5 {
                give(vec![0u8; MIN_BYTES + i]);
            }
            let kept = pool.u8s.lock().map(|l| l.len()).unwrap_or(0);
            assert_eq!(kept, MAX_KEPT);
            // a stream of small buffers given later pushes out none of the large ones
            let large: Vec<*const u8> = (0..4)
                .map(|i| {
                    let v = vec![0u8; 64 * MIN_BYTES + i];
                    let p = v.as_ptr();
                    give(v);
                    p
                })
                .collect();
            for _ in 0..3 * MAX_KEPT {
                give(vec![0u8; MIN_BYTES]);
            }
            assert_eq!(pool.u8s.lock().map(|l| l.len()).unwrap_or(0), MAX_KEPT);
            let mut got: Vec<*const u8> = (0..4)
                .filter_map(|_| reuse::<u8>(64 * MIN_BYTES).map(|v| v.as_ptr()))
                .collect();
            got.reverse();
            assert_eq!(got, large, "the large buffers, most recently given first");
        });
        // outside the scope nothing is pooled
        give(vec![0i32; MIN_BYTES]);
        assert_eq!(pool.i32s.lock().map(|l| l.len()).unwrap_or(9), 0);
    }
}
