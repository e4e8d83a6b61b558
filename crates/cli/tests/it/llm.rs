//! `verity model compile` on a GGUF language model and `verity generate`, as a user runs them, on
//! SmolLM2-135M-Instruct (fetched by scripts/setup-models).

use super::node::{cli, cli_ok, NodeProc};
use super::{fails, ok, root, verity};
use serde_json::Value;

const MODEL: &str = ".models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn model() -> &'static str {
    assert!(
        root().join(MODEL).exists(),
        "{MODEL} is missing: run scripts/setup-models"
    );
    MODEL
}

#[test]
fn generate_streams_llama_cpps_greedy_answer_and_its_hashes() {
    let m = model();
    let out = ok(&[
        "generate",
        m,
        "--prompt",
        "What is 12 times 7?",
        "--chat",
        "--max-tokens",
        "16",
        "--json",
        "--context",
        "128",
    ]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    // llama.cpp's greedy answer on the same file (crates/llm/tests/fixtures/smollm2_llama_cpp.json)
    let want = [33u64, 34, 1711, 216, 39, 314, 216, 39, 34, 30, 2];
    let got: Vec<u64> = doc["output_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(got, want);
    assert_eq!(doc["text"], "12 times 7 is 72.");
    assert_eq!(doc["finish_reason"], "stop");
    let prompt: Vec<u32> = doc["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(prompt.len(), 39);
    let bytes: Vec<u8> = prompt.iter().flat_map(|t| t.to_be_bytes()).collect();
    assert_eq!(
        doc["prompt_hash"].as_str().unwrap(),
        verity_core::keccak256(&bytes).to_string()
    );
    // streamed: the same text on stdout, the hashes on stderr; the context does not change the bits
    let o = verity(&[
        "generate",
        m,
        "--prompt",
        "What is 12 times 7?",
        "--chat",
        "--max-tokens",
        "16",
    ]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim_end(),
        "12 times 7 is 72."
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(doc["output_hash"].as_str().unwrap()), "{err}");
    assert!(err.contains("tokens/s"), "{err}");
    // --max-tokens stops the generation
    let doc: Value = serde_json::from_str(&ok(&[
        "generate",
        m,
        "--prompt",
        "Once upon a time",
        "--max-tokens",
        "5",
        "--json",
        "--context",
        "64",
    ]))
    .unwrap();
    assert_eq!(doc["output_tokens"].as_array().unwrap().len(), 5);
    assert_eq!(doc["finish_reason"], "length");
}

#[test]
fn compiling_a_gguf_writes_its_decode_step() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("step.vty");
    let o = out.to_str().unwrap();
    let text = ok(&["model", "compile", m, "-o", o, "--context", "64"]);
    assert!(text.contains("architecture llama — 30 layers"), "{text}");
    assert!(
        text.contains("0 multipliers rounded; requantized float matrices: none"),
        "{text}"
    );
    let id = text
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    // 4-bit weights take 4 bits: the step is smaller than the GGUF's f32 equivalent by far
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(size < 150_000_000, "{size} bytes");
    let inspect = ok(&["model", "inspect", o]);
    assert!(inspect.contains(&id), "{inspect}");
    assert!(
        inspect.contains("k_cache.29"),
        "inspect lists the cache inputs"
    );
}

#[test]
fn bad_language_model_requests_get_one_clear_sentence() {
    let m = model();
    let e = fails(&["generate", "no/such.gguf", "--prompt", "x"]);
    assert!(e.contains("no such file"), "{e}");
    let e = fails(&["generate", "fixtures/cnn.onnx", "--prompt", "x"]);
    assert!(e.contains("not a GGUF file"), "{e}");
    let long = "word ".repeat(100);
    let e = fails(&["generate", m, "--prompt", &long, "--context", "16"]);
    assert!(e.contains("more than a context of 16 positions"), "{e}");
    let e = fails(&["generate", m, "--prompt", "", "--context", "16"]);
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn a_seeded_sample_is_the_same_every_time_and_stop_texts_end_it() {
    let m = model();
    let run = |seed: &str, extra: &[&str]| -> Value {
        let mut args = vec![
            "generate",
            m,
            "--chat",
            "--prompt",
            "Write one sentence about the sea.",
            "--temperature",
            "1.0",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--max-tokens",
            "24",
            "--context",
            "96",
            "--json",
        ];
        args.extend_from_slice(extra);
        serde_json::from_str(&ok(&args)).unwrap()
    };
    let a = run("7", &[]);
    let b = run("7", &["--threads", "2"]);
    assert_eq!(a["output_tokens"], b["output_tokens"]);
    assert_eq!(a["output_hash"], b["output_hash"]);
    let c = run("8", &[]);
    assert_ne!(
        a["output_tokens"], c["output_tokens"],
        "another seed, another sample"
    );
    assert_eq!(a["sampling"]["fixed_point"]["top_p"], 62259);
    // a stop text ends the output before it
    let text = a["text"].as_str().unwrap();
    let word = text.split_whitespace().nth(2).unwrap().to_string();
    let d = run("7", &["--stop", &word]);
    let cut = d["text"].as_str().unwrap();
    assert_eq!(d["finish_reason"], "stop");
    assert!(
        text.starts_with(cut) && !cut.contains(&word),
        "{cut:?} of {text:?}"
    );
    let e = fails(&["generate", m, "--prompt", "x", "--temperature", "-1"]);
    assert!(e.contains("temperature -1 is outside"), "{e}");
    let e = fails(&["generate", m, "--prompt", "x", "--top-p", "0"]);
    assert!(e.contains("top_p 0 is outside"), "{e}");
}

/// `verity generate --dump-step` writes one step's canonical inputs; `verity run` on the step that
/// `verity model compile` makes with the same context re-executes it: its logits pick the token the
/// generation chose next.
#[test]
fn one_step_of_a_generation_runs_under_verity_run() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("step38.json");
    let vty = dir.path().join("step.vty");
    let out = ok(&[
        "generate",
        m,
        "--prompt",
        "What is 12 times 7?",
        "--chat",
        "--max-tokens",
        "2",
        "--json",
        "--context",
        "48",
        "--dump-step",
        "38",
        "--dump-file",
        dump.to_str().unwrap(),
    ]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    // the prompt's last position (39 tokens): its logits choose the first output token
    assert_eq!(doc["prompt_tokens"].as_array().unwrap().len(), 39);
    let first = doc["output_tokens"][0].as_u64().unwrap();
    ok(&[
        "model",
        "compile",
        m,
        "-o",
        vty.to_str().unwrap(),
        "--context",
        "48",
    ]);
    let run: Value = serde_json::from_str(&ok(&[
        "run",
        vty.to_str().unwrap(),
        "--input",
        dump.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(run["model_id"], doc["model_id"]);
    fn flat(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| flat(x, out)),
            x => out.push(x.as_f64().unwrap()),
        }
    }
    let mut logits = Vec::new();
    flat(&run["outputs"]["logits"]["data"], &mut logits);
    assert_eq!(logits.len(), 49152);
    assert_eq!(verity_llm::session::argmax(&logits) as u64, first);

    // Published to a node (the step compiled by the publisher, the GGUF its source), the node runs
    // the same step on the same inputs: the same logits, under a receipt `verity verify` re-executes.
    let node = NodeProc::start(&dir.path().join("node"), &[]);
    let key = dir.path().join("user.key");
    cli_ok(&node, &key, &["key", "new"]);
    let published: Value = serde_json::from_str(&cli_ok(
        &node,
        &key,
        &[
            "model",
            "publish",
            m,
            "--name",
            "smollm2-step",
            "--version",
            "1",
            "--context",
            "48",
        ],
    ))
    .unwrap();
    assert_eq!(published["model_id"], doc["model_id"]);
    let receipt = dir.path().join("receipt.json");
    let resp_file = dir.path().join("resp.json");
    cli_ok(
        &node,
        &key,
        &[
            "infer",
            "smollm2-step",
            "--input",
            dump.to_str().unwrap(),
            "--save-receipt",
            receipt.to_str().unwrap(),
            "--output",
            resp_file.to_str().unwrap(),
        ],
    );
    let resp: Value = serde_json::from_slice(&std::fs::read(&resp_file).unwrap()).unwrap();
    let logits_out = resp["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "logits")
        .unwrap();
    assert_eq!(logits_out["data"], run["outputs"]["logits"]["data"]);
    assert_eq!(
        resp["receipt"]["receipt"]["output_hash"],
        run["output_hash"]
    );
    let verdict = cli(
        &node,
        &key,
        &[
            "verify",
            receipt.to_str().unwrap(),
            "--input",
            dump.to_str().unwrap(),
            "--output",
            resp_file.to_str().unwrap(),
            "--model",
            vty.to_str().unwrap(),
        ],
    );
    assert_eq!(
        verdict.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verdict.stdout)
    );
    assert!(String::from_utf8_lossy(&verdict.stdout).contains("re-execution"));

    // a position past the generation is refused
    let e = fails(&[
        "generate",
        m,
        "--prompt",
        "Hi",
        "--max-tokens",
        "2",
        "--context",
        "48",
        "--dump-step",
        "40",
        "--dump-file",
        dump.to_str().unwrap(),
    ]);
    assert!(e.contains("past the generation's last position"), "{e}");
}
