//! Fuzz the `.vty` decoder: any bytes must give a model or an error, never a panic; a decoded model
//! re-encodes to the same bytes and runs on zero inputs without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use verity_engine::{vty, Executor, Mode};

fuzz_target!(|data: &[u8]| {
    if let Ok((model, _id)) = vty::decode(data) {
        assert_eq!(vty::encode(&model), data);
        let small = model.inputs.iter().all(|i| i.shape.iter().map(|&d| d as u64).product::<u64>() <= 1 << 16);
        if small {
            let inputs = model
                .inputs
                .iter()
                .map(|i| vec![0i32; i.shape.iter().map(|&d| d as usize).product()])
                .collect();
            let _ = Executor::new(&model, Mode::Reference).run(inputs);
        }
    }
});
