//! Run-time choice of the instruction set for plain-Rust loops.
//!
//! The element-wise and requantization loops are written once in portable Rust; [`multiversion!`]
//! compiles each for AVX-512, for AVX2 and for the baseline, and calls the best one the CPU supports.
//! Integer results never depend on the choice (the same operations, only wider registers).

/// The widest instruction set the plain loops are compiled for on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F/BW/DQ/VL.
    Avx512,
    /// AVX2.
    Avx2,
    /// The target's baseline.
    Base,
}

thread_local! {
    /// The most a caller allows on this thread (tests lower it to run every level on one machine):
    /// 0 = baseline only, 1 = up to AVX2, 2 = any. Per thread, and carried into the threads a run
    /// splits across ([`Isa::within_cap`]), so one test's level never leaks into another test's run
    /// midway (a kernel that lays its data out for one level and then computes at another).
    static CAP: std::cell::Cell<u8> = const { std::cell::Cell::new(2) };
}

impl Isa {
    /// Limit the plain loops to `max` and below on this thread (and the threads its runs split
    /// across) from now on, for tests that compare the levels: the results are the same integers at
    /// every level.
    #[doc(hidden)]
    pub fn cap(max: Isa) {
        let v = match max {
            Isa::Base => 0,
            Isa::Avx2 => 1,
            Isa::Avx512 => 2,
        };
        CAP.with(|c| c.set(v));
    }

    /// This thread's cap (to carry into the threads a kernel's parts run on).
    pub(crate) fn current_cap() -> u8 {
        CAP.with(|c| c.get())
    }

    /// Run `f` under the cap `cap` (one [`Isa::current_cap`] gave), then put this thread's back (a
    /// pool worker may run parts of several runs, one inside another's wait).
    pub(crate) fn within_cap<R>(cap: u8, f: impl FnOnce() -> R) -> R {
        struct Restore(u8);
        impl Drop for Restore {
            fn drop(&mut self) {
                CAP.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CAP.with(|c| c.replace(cap)));
        f()
    }

    /// The CPU's level (detected once per process), within the cap.
    #[inline]
    pub fn detect() -> Isa {
        static DETECTED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);
        let mut level = DETECTED.load(std::sync::atomic::Ordering::Relaxed);
        if level == u8::MAX {
            level = Isa::probe();
            DETECTED.store(level, std::sync::atomic::Ordering::Relaxed);
        }
        match level.min(CAP.with(|c| c.get())) {
            2 => Isa::Avx512,
            1 => Isa::Avx2,
            _ => Isa::Base,
        }
    }

    /// 2 for AVX-512 F/BW/DQ/VL, 1 for AVX2, else 0.
    fn probe() -> u8 {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                return 2;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return 1;
            }
        }
        0
    }
}

/// `fn name(args) -> ret = body;` defines `name`, which calls the `#[inline(always)]` function `body`
/// compiled for the best [`Isa`] of the running CPU.
#[macro_export]
macro_rules! multiversion {
    ($vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty = $body:expr) => {
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
                unsafe fn wide($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                match $crate::simd::Isa::detect() {
                    // SAFETY: the CPU supports the instruction set, checked by `Isa::detect`; the
                    // functions are otherwise safe Rust.
                    $crate::simd::Isa::Avx512 => return unsafe { wide($($arg),*) },
                    $crate::simd::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::simd::Isa::Base => {}
                }
            }
            $body($($arg),*)
        }
    };
}

/// `dst[j] += src[j] · s` for every `j` (`f64`, no fused multiply-add: the same two roundings at every
/// level, so a float evaluation stays bit-identical across machines).
#[inline(always)]
fn axpy_f64_body(dst: &mut [f64], src: &[f64], s: f64) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d += v * s;
    }
}

crate::multiversion! {
    pub fn axpy_f64(dst: &mut [f64], src: &[f64], s: f64) -> () = axpy_f64_body
}
