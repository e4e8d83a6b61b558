//! The tokenizers against llama.cpp's own reference tokenizations: every `ggml-vocab-*.gguf` that
//! `scripts/setup-models` extracts (real vocabularies — GPT-2, Llama 3, Qwen2, Llama 2's
//! SentencePiece, Phi-3, … — each with llama.cpp's test inputs and the token IDs llama.cpp gives
//! them). A vocabulary Verity supports must give exactly those IDs for every input; one it does
//! not must be refused with a message naming what is unsupported.

use std::path::PathBuf;

use verity_llm::gguf::Gguf;
use verity_llm::tokenizer::Tokenizer;
use verity_llm::LlmError;

/// Vocabularies that must be supported (the test fails if any of them is refused).
const REQUIRED: &[&str] = &[
    "gpt-2",
    "llama-bpe",
    "qwen2",
    "llama-spm",
    "phi-3",
    "starcoder",
    "refact",
    "command-r",
    "mpt",
    "falcon",
    "qwen35",
];

fn vocab_dir() -> PathBuf {
    let dir = std::env::var_os("VERITY_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.models"))
        .join("vocab");
    assert!(
        dir.join(".complete").exists(),
        "{} is missing: run scripts/setup-models (it fetches llama-cpp-python's source package)",
        dir.display()
    );
    dir
}

/// llama.cpp's test cases: inputs separated by `__ggml_vocab_test__` lines, one line of IDs each.
fn cases(dir: &std::path::Path, name: &str) -> Option<Vec<(String, Vec<u32>)>> {
    let inp = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.inp"))).ok()?;
    let out = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.out"))).ok()?;
    let inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let outputs: Vec<&str> = out.split('\n').collect();
    let n = inputs.len() - 1;
    assert!(n > 0 && outputs.len() > n, "{name}: malformed test files");
    Some(
        (0..n)
            .map(|i| {
                let ids = outputs[i]
                    .split_whitespace()
                    .map(|t| t.parse().unwrap())
                    .collect();
                (inputs[i].to_string(), ids)
            })
            .collect(),
    )
}

#[test]
fn tokenizers_give_llama_cpp_token_ids_on_real_vocabularies() {
    let dir = vocab_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let f = e.unwrap().file_name().into_string().unwrap();
            f.strip_prefix("ggml-vocab-")
                .and_then(|s| s.strip_suffix(".gguf"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    let mut failures = Vec::new();
    let mut supported = Vec::new();
    for name in &names {
        let g = Gguf::open(&dir.join(format!("ggml-vocab-{name}.gguf"))).unwrap();
        let tok = match Tokenizer::from_gguf(&g) {
            Ok(t) => t,
            Err(LlmError::Unsupported(msg)) => {
                println!("{name:>16}: refused: {msg}");
                assert!(
                    msg.contains("tokenizer") || msg.contains("pre-tokenizer"),
                    "{msg}"
                );
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        supported.push(name.clone());
        let Some(cases) = cases(&dir, name) else {
            println!("{name:>16}: loads (no reference cases)");
            continue;
        };
        let mut ok = 0;
        for (text, want) in &cases {
            let got = tok.encode_raw(text).unwrap();
            if &got == want {
                ok += 1;
                // Decoding gives the text back (SentencePiece's added leading space aside).
                let back = tok.decode(&got);
                let back = if tok.add_space_prefix() {
                    back.strip_prefix(' ').unwrap_or(&back).to_string()
                } else {
                    back
                };
                assert_eq!(back, *text, "{name}: decode({got:?})");
            } else {
                failures.push(format!("{name}: {text:?}: got {got:?}, llama.cpp {want:?}"));
            }
        }
        println!("{name:>16}: {ok}/{} cases equal llama.cpp's", cases.len());
    }
    for r in REQUIRED {
        assert!(supported.iter().any(|s| s == r), "{r} is refused");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Prompts with special tokens written in them (chat markup, BOS/EOS in the middle, Phi-3's tokens
/// that swallow the whitespace after them), with special-token parsing on as for prompts: the IDs
/// llama.cpp gives them (`tests/fixtures/vocab_special.json`, made by `scripts/vocab_reference.py`).
#[test]
fn prompts_with_special_tokens_give_llama_cpp_token_ids() {
    let dir = vocab_dir();
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/vocab_special.json")).unwrap();
    let mut checked = 0;
    for (name, cases) in fixture["vocabularies"].as_object().unwrap() {
        let g = Gguf::open(&dir.join(format!("ggml-vocab-{name}.gguf"))).unwrap();
        let tok = Tokenizer::from_gguf(&g).unwrap();
        for case in cases.as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tok.encode(text).unwrap(), want, "{name}: {text:?}");
            // Without special-token parsing the markup is plain text: other IDs.
            assert_ne!(tok.encode_raw(text).unwrap(), want, "{name}: {text:?}");
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} cases");
}
