//! The `verity` binary: parse arguments, run, print the error as one sentence, exit non-zero.
use clap::Parser;

/// Tensors of megabytes are allocated and freed on every inference; mimalloc keeps freed pages mapped for
/// reuse instead of returning them to the kernel, so a steady stream of requests does not page-fault.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Like other command-line tools, stop quietly when the reader of our output goes away
    // (`verity model inspect m.vty | head`) instead of panicking on the failed write.
    #[cfg(unix)]
    // SAFETY: resetting a signal's disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = verity_cli::Cli::parse();
    if let Err(e) = verity_cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
