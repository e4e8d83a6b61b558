//! The `verity` binary: parse arguments, run, print the error as one sentence, exit non-zero.
use clap::Parser;

/// Tensors of megabytes are allocated and freed on every inference; mimalloc keeps freed pages mapped for
/// reuse instead of returning them to the kernel, so a steady stream of requests does not page-fault.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (milliseconds before freed memory is returned to
/// the kernel; 0: at once).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

extern "C" {
    // mimalloc's option setter, from the library the global allocator links
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

fn main() {
    // Like other command-line tools, stop quietly when the reader of our output goes away
    // (`verity model inspect m.vty | head`) instead of panicking on the failed write.
    #[cfg(unix)]
    // SAFETY: resetting a signal's disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = verity_cli::Cli::parse();
    if cli.returns_freed_memory() {
        // Compiling holds a model's weights while tensors of its size come and go (a 400 MB matrix
        // read, converted, quantized): with mimalloc's default delay before freed pages are returned,
        // those transients add up and VGG-19's compile peaks at 1.32 GB instead of 1.02 GB.
        // SAFETY: sets a plain integer option before any other thread starts.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    if let Err(e) = verity_cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
