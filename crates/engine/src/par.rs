//! Splitting a kernel's output across threads.
//!
//! Kernels split their output rows into at most `threads` contiguous parts and run the parts as tasks
//! of one process-wide pool (rayon's), so a split costs a task hand-off, not a thread start. Each part
//! computes exactly the integers a single thread would: only who computes which rows changes.

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
    let f = &f;
    rayon::scope(|s| {
        for (t, part) in data.chunks_mut(per * row_len).enumerate() {
            s.spawn(move |_| f(t * per, part));
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
