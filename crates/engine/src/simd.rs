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

/// The most a caller allows (tests lower it to run every level on one machine): 0 = baseline only,
/// 1 = up to AVX2, 2 = any.
static CAP: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);

impl Isa {
    /// Limit the plain loops to `max` and below from now on (for tests that compare the levels: the
    /// results are the same integers at every level).
    #[doc(hidden)]
    pub fn cap(max: Isa) {
        let v = match max {
            Isa::Base => 0,
            Isa::Avx2 => 1,
            Isa::Avx512 => 2,
        };
        CAP.store(v, std::sync::atomic::Ordering::Relaxed);
    }

    /// Detected through the standard library's cached CPU flags, within the cap.
    #[inline]
    pub fn detect() -> Isa {
        let cap = CAP.load(std::sync::atomic::Ordering::Relaxed);
        #[cfg(target_arch = "x86_64")]
        {
            if cap >= 2
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                return Isa::Avx512;
            }
            if cap >= 1 && std::arch::is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        let _ = cap;
        Isa::Base
    }
}

/// `fn name(args) -> ret = body;` defines `name`, which calls the `#[inline(always)]` function `body`
/// compiled for the best [`Isa`] of the running CPU.
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
pub(crate) use multiversion;
