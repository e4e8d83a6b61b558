//! Fuzz the user-facing tensor readers (`.npy` and JSON).
#![no_main]
use libfuzzer_sys::fuzz_target;
use verity_engine::io::{tensor_from_json, tensor_from_npy};

fuzz_target!(|data: &[u8]| {
    let _ = tensor_from_npy(data);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = tensor_from_json(&v);
    }
});
