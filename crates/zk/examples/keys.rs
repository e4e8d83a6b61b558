//! Say, for each ONNX file given, whether Verity can prove it in zk mode (and if not, which node and why).
//!
//! `cargo run --release -p verity-zk --example keys -- fixtures/*.onnx`
use verity_compiler::{compile_path, CompileOptions};

fn main() {
    for name in std::env::args().skip(1) {
        let m = match compile_path(std::path::Path::new(&name), &CompileOptions::default()) {
            Ok((m, _)) => m,
            Err(e) => {
                println!("{name}: does not compile: {e}");
                continue;
            }
        };
        match verity_zk::circuit::circuit(&m, verity_engine::vty::model_id(&m)) {
            Ok(c) => println!(
                "{name}: provable; trace 2^{} ({}-bit limbs), constants 2^{}",
                c.t_bits, c.limb_bits, c.w_bits
            ),
            Err(e) => println!("{name}: {e}"),
        }
    }
}
