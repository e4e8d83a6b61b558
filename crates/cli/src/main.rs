//! The `verity` binary: parse arguments, run, print the error as one sentence, exit non-zero.
use clap::Parser;

fn main() {
    let cli = verity_cli::Cli::parse();
    if let Err(e) = verity_cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
