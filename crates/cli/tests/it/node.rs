//! End-to-end tests of a real node process on loopback: publish → infer → verify through the CLI and raw
//! HTTP, the error contract, concurrency, restart and crash safety.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use verity_core::{keccak256, Hash, Manifest, SecretKey, SignedReceipt};

use super::{root, verity};

/// A node process, killed when dropped.
pub struct NodeProc {
    child: Child,
    pub url: String,
}

impl NodeProc {
    pub fn start(dir: &Path, extra: &[&str]) -> NodeProc {
        let dir = dir.to_str().expect("path");
        let mut args = vec!["node", "--listen", "127.0.0.1:0", "--data-dir", dir];
        args.extend_from_slice(extra);
        NodeProc::spawn(&args)
    }

    /// Start `verity <args>` (a node or a watcher) and wait for its "listening on" line.
    pub fn spawn(args: &[&str]) -> NodeProc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_verity"))
            .args(args)
            .env(
                "VERITY_LOG",
                std::env::var("VERITY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        BufReader::new(out)
            .read_line(&mut line)
            .expect("ready line");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_string();
        NodeProc { child, url }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            if start.elapsed() > Duration::from_secs(20) {
                self.kill9();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

pub fn cli(node: &NodeProc, key: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_verity"))
        .args(args)
        .env("VERITY_NODE", &node.url)
        .env("VERITY_KEY_FILE", key)
        .env_remove("VERITY_KEY")
        .current_dir(root())
        .output()
        .expect("run verity")
}

pub fn cli_ok(node: &NodeProc, key: &Path, args: &[&str]) -> String {
    let o = cli(node, key, args);
    assert!(
        o.status.success(),
        "verity {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("utf-8")
}

fn error_code(resp: reqwest::blocking::Response, status: u16) -> String {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    let v: Value = resp.json().expect("JSON error body");
    let code = v["error"]["code"].as_str().expect("error.code").to_string();
    assert!(
        !v["error"]["message"].as_str().unwrap_or("").is_empty(),
        "error without a message: {v}"
    );
    code
}

fn compile(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(format!("{name}.vty"));
    let o = verity(&[
        "model",
        "compile",
        &format!("fixtures/{name}.onnx"),
        "-o",
        out.to_str().expect("path"),
        "--input-range",
        "0:1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

pub fn signed_manifest(key: &SecretKey, id: Hash, name: &str, version: &str) -> String {
    let m = Manifest {
        model_id: id,
        name: name.into(),
        version: version.into(),
        description: String::new(),
        task: String::new(),
        license: String::new(),
        tags: vec![],
        owner: key.address(),
        source_hash: Hash::ZERO,
        report_hash: Hash::ZERO,
    };
    serde_json::to_string(&m.sign(key)).expect("json")
}

pub fn publish_raw(url: &str, manifest: String, model: Vec<u8>) -> reqwest::blocking::Response {
    let form = reqwest::blocking::multipart::Form::new()
        .text("manifest", manifest)
        .part("model", reqwest::blocking::multipart::Part::bytes(model));
    http()
        .post(format!("{url}/v1/models"))
        .multipart(form)
        .send()
        .expect("publish")
}

pub fn model_id_of(vty: &Path) -> Hash {
    let bytes = std::fs::read(vty).expect("read vty");
    verity_engine::vty::decode(&bytes).expect("decode").1
}

fn input_doc(name: &str) -> Value {
    serde_json::from_slice(
        &std::fs::read(root().join(format!("fixtures/{name}.input.json"))).expect("input"),
    )
    .expect("json")
}

#[test]
fn publish_infer_verify_round_trip_cli_and_http() {
    let tmp = tempfile::tempdir().expect("tmp");
    let node = NodeProc::start(&tmp.path().join("node"), &[]);
    let key = tmp.path().join("user.key");
    let addr = cli_ok(&node, &key, &["key", "new"]);
    assert_eq!(cli_ok(&node, &key, &["key", "show"]), addr);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let nk = std::fs::metadata(tmp.path().join("node/node.key")).expect("node key");
        assert_eq!(nk.permissions().mode() & 0o777, 0o600);
    }

    // An ONNX file (compiled by the node, ID checked against the signed manifest) and a .vty file.
    let out = cli_ok(
        &node,
        &key,
        &[
            "model",
            "publish",
            "fixtures/mlp.onnx",
            "--name",
            "mlp",
            "--version",
            "1.0.0",
            "--tag",
            "vision",
            "--task",
            "classification",
            "--input-range",
            "0:1",
        ],
    );
    let published: Value = serde_json::from_str(&out).expect("json");
    let mlp_vty = compile(tmp.path(), "mlp");
    let mlp_id = model_id_of(&mlp_vty);
    assert_eq!(published["model_id"], json!(mlp_id));
    assert_eq!(published["status"], "created");
    let cnn_vty = compile(tmp.path(), "cnn");
    cli_ok(
        &node,
        &key,
        &[
            "model",
            "publish",
            cnn_vty.to_str().expect("p"),
            "--name",
            "cnn",
            "--version",
            "2",
            "--source",
            "fixtures/cnn.onnx",
        ],
    );
    // An ONNX file compiled by the node at another precision (16-bit activations; the default is
    // int8): the node compiles with the option the client signed for, so the IDs agree.
    let cnn8: Value = serde_json::from_str(&cli_ok(
        &node,
        &key,
        &[
            "model",
            "publish",
            "fixtures/cnn.onnx",
            "--name",
            "cnn16",
            "--version",
            "1",
            "--input-range",
            "0:1",
            "--precision",
            "w8a16",
        ],
    ))
    .expect("json");
    let cnn8_local = tmp.path().join("cnn16.vty");
    let o = verity(&[
        "model",
        "compile",
        "fixtures/cnn.onnx",
        "-o",
        cnn8_local.to_str().expect("path"),
        "--input-range",
        "0:1",
        "--precision",
        "w8a16",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(cnn8["model_id"], json!(model_id_of(&cnn8_local)));
    assert_ne!(cnn8["model_id"], json!(model_id_of(&cnn_vty)));
    // Re-publishing the same thing is idempotent.
    let again: Value = serde_json::from_str(&cli_ok(
        &node,
        &key,
        &[
            "model",
            "publish",
            mlp_vty.to_str().expect("p"),
            "--name",
            "mlp",
            "--version",
            "1.0.0",
        ],
    ))
    .expect("json");
    assert_eq!(again["status"], "exists");

    let ls = cli_ok(&node, &key, &["model", "ls"]);
    assert!(
        ls.contains("mlp@1.0.0 (latest)") && ls.contains("cnn@2"),
        "{ls}"
    );
    let tagged = cli_ok(&node, &key, &["model", "ls", "--tag", "vision", "--json"]);
    let tagged: Value = serde_json::from_str(&tagged).expect("json");
    assert_eq!(tagged["models"].as_array().map(Vec::len), Some(1));
    let show: Value =
        serde_json::from_str(&cli_ok(&node, &key, &["model", "show", "mlp"])).expect("json");
    assert_eq!(show["model_id"], json!(mlp_id));
    assert_eq!(
        show["manifest"]["manifest"]["owner"].as_str(),
        Some(addr.trim())
    );
    assert_eq!(show["inputs"][0]["shape"], json!([1, 784]));
    assert_eq!(show["report_by"], "owner");

    // Pull: the downloaded model is byte-identical to a local compile.
    let pulled = tmp.path().join("pulled.vty");
    cli_ok(
        &node,
        &key,
        &[
            "model",
            "pull",
            "mlp@1.0.0",
            "-o",
            pulled.to_str().expect("p"),
        ],
    );
    assert_eq!(
        std::fs::read(&pulled).expect("pulled"),
        std::fs::read(&mlp_vty).expect("vty")
    );

    // Infer through the CLI, verify offline (exit 0), tamper (exit 1).
    let receipt = tmp.path().join("r.json");
    let resp_file = tmp.path().join("resp.json");
    cli_ok(
        &node,
        &key,
        &[
            "infer",
            "mlp",
            "--input",
            "fixtures/mlp.input.json",
            "--save-receipt",
            receipt.to_str().expect("p"),
            "--output",
            resp_file.to_str().expect("p"),
        ],
    );
    let v = |args: &[&str]| {
        cli(
            &node,
            &key,
            &[&["verify", receipt.to_str().expect("p")][..], args].concat(),
        )
    };
    let full = v(&[
        "--input",
        "fixtures/mlp.input.json",
        "--output",
        resp_file.to_str().expect("p"),
        "--model",
        mlp_vty.to_str().expect("p"),
    ]);
    assert_eq!(
        full.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&full.stdout)
    );
    let verdict = String::from_utf8_lossy(&full.stdout).to_string();
    assert!(verdict.contains("re-execution"), "{verdict}");
    // The receipt's outputs equal a local `verity run` of the same model and input.
    let local: Value = serde_json::from_str(&String::from_utf8_lossy(
        &verity(&[
            "run",
            mlp_vty.to_str().expect("p"),
            "--input",
            "fixtures/mlp.input.json",
        ])
        .stdout,
    ))
    .expect("run json");
    let resp: Value =
        serde_json::from_slice(&std::fs::read(&resp_file).expect("resp")).expect("json");
    assert_eq!(
        resp["receipt"]["receipt"]["output_hash"],
        local["output_hash"]
    );
    assert_eq!(
        resp["receipt"]["receipt"]["input_hash"],
        local["input_hash"]
    );
    assert_eq!(
        resp["outputs"][0]["data"],
        local["outputs"]["logits"]["data"]
    );

    // Tampering: another model, another input, another output, another signer, a forged field.
    let wrong_model = v(&["--model", cnn_vty.to_str().expect("p")]);
    assert_eq!(wrong_model.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong_model.stdout).starts_with("invalid: "));
    let mut other_in = input_doc("mlp");
    other_in["input"]["data"][0] = json!(0.123);
    let other_in_path = tmp.path().join("other_in.json");
    std::fs::write(&other_in_path, other_in.to_string()).expect("write");
    assert_eq!(
        v(&[
            "--input",
            other_in_path.to_str().expect("p"),
            "--model",
            mlp_vty.to_str().expect("p")
        ])
        .status
        .code(),
        Some(1)
    );
    let mut bad_out = resp.clone();
    bad_out["outputs"][0]["data"][3] = json!(0.5);
    let bad_out_path = tmp.path().join("bad_out.json");
    std::fs::write(&bad_out_path, bad_out.to_string()).expect("write");
    assert_eq!(
        v(&["--output", bad_out_path.to_str().expect("p")])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        v(&["--signer", "0x0000000000000000000000000000000000000001"])
            .status
            .code(),
        Some(1)
    );
    let mut forged: Value =
        serde_json::from_slice(&std::fs::read(&receipt).expect("r")).expect("json");
    // a served receipt's trace root is deferred (zero); one edited to name a root is not the node's
    assert_eq!(forged["receipt"]["trace_root"], json!(Hash::ZERO));
    forged["receipt"]["trace_root"] = json!(keccak256(b"a trace the node never signed"));
    let forged_path = tmp.path().join("forged.json");
    std::fs::write(&forged_path, forged.to_string()).expect("write");
    let o = cli(&node, &key, &["verify", forged_path.to_str().expect("p")]);
    assert_eq!(o.status.code(), Some(1));
    // a full response passed as the receipt file, its outputs edited: the outputs are checked too
    let mut resp: Value =
        serde_json::from_slice(&std::fs::read(&resp_file).expect("r")).expect("json");
    assert!(resp.get("receipt").is_some() && resp.get("outputs").is_some());
    let o = cli(&node, &key, &["verify", resp_file.to_str().expect("p")]);
    assert_eq!(o.status.code(), Some(0), "the untouched response verifies");
    let x = &mut resp["outputs"][0]["data"][0];
    *x = json!(x.as_f64().expect("a number") + 1.0);
    let edited = tmp.path().join("edited-response.json");
    std::fs::write(&edited, resp.to_string()).expect("write");
    let o = cli(&node, &key, &["verify", edited.to_str().expect("p")]);
    assert_eq!(o.status.code(), Some(1), "edited outputs are invalid");
    assert!(String::from_utf8_lossy(&o.stdout).contains("outputs hash to"));
    let o = cli(
        &node,
        &key,
        &[
            "verify",
            tmp.path().join("missing.json").to_str().expect("p"),
        ],
    );
    assert_eq!(o.status.code(), Some(2));

    // Raw HTTP: native JSON, native binary form, KServe v2 JSON and binary; all give the same output hash.
    let c = http();
    let native: Value = c
        .post(format!("{}/v1/models/{mlp_id}/infer", node.url))
        .json(&json!({"inputs": input_doc("mlp")}))
        .send()
        .expect("send")
        .json()
        .expect("json");
    let signed: SignedReceipt = serde_json::from_value(native["receipt"].clone()).expect("receipt");
    let node_addr = signed.verify().expect("valid receipt");
    assert_eq!(
        signed.receipt.output_hash.to_hex(),
        local["output_hash"].as_str().expect("hash")
    );
    let data: Vec<f64> = input_doc("mlp")["input"]["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x.as_f64().expect("f64"))
        .collect();
    let header = json!({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP64",
                                     "parameters": {"binary_data_size": data.len() * 8}}]});
    let h = header.to_string().into_bytes();
    let mut body = h.clone();
    for x in &data {
        body.extend_from_slice(&x.to_le_bytes());
    }
    let bin: Value = c
        .post(format!("{}/v1/models/mlp@1.0.0/infer", node.url))
        .header("Inference-Header-Content-Length", h.len().to_string())
        .body(body.clone())
        .send()
        .expect("send")
        .json()
        .expect("json");
    assert_eq!(
        bin["receipt"]["receipt"]["output_hash"],
        native["receipt"]["receipt"]["output_hash"]
    );
    let v2: Value = c
        .post(format!("{}/v2/models/mlp/infer", node.url))
        .json(&json!({"id": "req-1", "inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP64", "data": data}]}))
        .send()
        .expect("send")
        .json()
        .expect("json");
    assert_eq!(v2["id"], "req-1");
    assert_eq!(v2["outputs"][0]["data"], native["outputs"][0]["data"]);
    let r2: SignedReceipt = serde_json::from_str(
        v2["parameters"]["verity_receipt"]
            .as_str()
            .expect("receipt str"),
    )
    .expect("receipt");
    assert_eq!(r2.verify().expect("valid"), node_addr);
    assert_eq!(r2.receipt.output_hash, signed.receipt.output_hash);
    // KServe binary output.
    let resp = c
        .post(format!("{}/v2/models/mlp/versions/1.0.0/infer", node.url))
        .header("Inference-Header-Content-Length", h.len().to_string())
        .body({
            let mut hb = json!({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP64",
                                 "parameters": {"binary_data_size": data.len() * 8}}],
                                 "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]})
                .to_string()
                .into_bytes();
            let n = hb.len();
            hb.extend_from_slice(&body[h.len()..]);
            // The header length must describe this header.
            assert!(n > 0);
            hb
        })
        .send()
        .expect("send");
    // The header above differs in length from `h`; expect a clean 400, then send it right.
    assert_eq!(resp.status().as_u16(), 400);
    let hb = json!({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP64",
                     "parameters": {"binary_data_size": data.len() * 8}}],
                     "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]})
    .to_string()
    .into_bytes();
    let mut b2 = hb.clone();
    b2.extend_from_slice(&body[h.len()..]);
    let resp = c
        .post(format!("{}/v2/models/mlp/versions/1.0.0/infer", node.url))
        .header("Inference-Header-Content-Length", hb.len().to_string())
        .body(b2)
        .send()
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let hl: usize = resp.headers()["inference-header-content-length"]
        .to_str()
        .expect("h")
        .parse()
        .expect("n");
    let all = resp.bytes().expect("bytes");
    let head: Value = serde_json::from_slice(&all[..hl]).expect("header json");
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 80);
    let vals: Vec<f64> = all[hl..]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
        .collect();
    assert_eq!(json!(vals), native["outputs"][0]["data"]);

    // The node stores receipts by request ID.
    let rid = signed.receipt.request_id;
    let stored: SignedReceipt = c
        .get(format!("{}/v1/receipts/{rid}", node.url))
        .send()
        .expect("send")
        .json()
        .expect("json");
    assert_eq!(stored, signed);

    // Download with Range.
    let vty_bytes = std::fs::read(&mlp_vty).expect("vty");
    let part = c
        .get(format!("{}/v1/models/{mlp_id}/download", node.url))
        .header("Range", "bytes=100-1099")
        .send()
        .expect("send");
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(&part.bytes().expect("b")[..], &vty_bytes[100..1100]);
    let tail = c
        .get(format!("{}/v1/models/{mlp_id}/download", node.url))
        .header("Range", "bytes=-10")
        .send()
        .expect("send");
    assert_eq!(
        &tail.bytes().expect("b")[..],
        &vty_bytes[vty_bytes.len() - 10..]
    );
    let bad = c
        .get(format!("{}/v1/models/{mlp_id}/download", node.url))
        .header("Range", format!("bytes={}-", vty_bytes.len()))
        .send()
        .expect("send");
    assert_eq!(bad.status().as_u16(), 416);

    // KServe metadata and health.
    let meta: Value = c
        .get(format!("{}/v2/models/mlp", node.url))
        .send()
        .expect("s")
        .json()
        .expect("j");
    assert_eq!(meta["inputs"][0]["shape"], json!([1, 784]));
    assert_eq!(meta["versions"], json!(["1.0.0"]));
    for p in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        "/v2/models/mlp/ready",
        "/metrics",
    ] {
        assert_eq!(
            c.get(format!("{}{p}", node.url))
                .send()
                .expect("s")
                .status()
                .as_u16(),
            200,
            "{p}"
        );
    }
    let metrics = c
        .get(format!("{}/metrics", node.url))
        .send()
        .expect("s")
        .text()
        .expect("t");
    assert!(metrics.contains("verity_inferences_total"), "{metrics}");
}

#[test]
fn errors_have_status_code_and_message_and_nothing_panics() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tmp.path().join("config.toml");
    std::fs::write(
        &cfg,
        "[limits]\nmax_body_bytes = 200000\nmax_model_bytes = 600000\nmax_tensor_elements = 100000\n[timeouts]\nheader_secs = 1\n",
    )
    .expect("cfg");
    let node = NodeProc::start(
        &tmp.path().join("node"),
        &["--config", cfg.to_str().expect("p")],
    );
    let owner = SecretKey::random();
    let other = SecretKey::random();
    let mlp = compile(tmp.path(), "mlp");
    let id = model_id_of(&mlp);
    let bytes = std::fs::read(&mlp).expect("vty");
    let u = &node.url;

    // Publishing: unsigned 401, bad signature 401, wrong signer 403, wrong ID 422, garbage model 422,
    // oversized 413, then success, version conflict 409, foreign name 403.
    let unsigned = json!({"manifest": {"model_id": id, "name": "mlp", "version": "1", "owner": owner.address()}}).to_string();
    assert_eq!(
        error_code(publish_raw(u, unsigned, bytes.clone()), 401),
        "missing_signature"
    );
    let mut badsig: Value =
        serde_json::from_str(&signed_manifest(&owner, id, "mlp", "1")).expect("j");
    badsig["signature"] = json!(format!("0x{}", "11".repeat(64) + "1f"));
    assert_eq!(
        error_code(publish_raw(u, badsig.to_string(), bytes.clone()), 401),
        "bad_signature"
    );
    let mut wrong: Value =
        serde_json::from_str(&signed_manifest(&other, id, "mlp", "1")).expect("j");
    wrong["manifest"]["owner"] = json!(owner.address());
    assert_eq!(
        error_code(publish_raw(u, wrong.to_string(), bytes.clone()), 403),
        "wrong_signer"
    );
    assert_eq!(
        error_code(
            publish_raw(
                u,
                signed_manifest(&owner, keccak256(b"x"), "mlp", "1"),
                bytes.clone()
            ),
            422
        ),
        "model_id_mismatch"
    );
    assert_eq!(
        error_code(
            publish_raw(
                u,
                signed_manifest(&owner, id, "mlp", "1"),
                b"VTY\x01garbage".to_vec()
            ),
            422
        ),
        "bad_model"
    );
    // an ONNX upload whose manifest does not name the file is refused before any compile
    assert_eq!(
        error_code(
            publish_raw(
                u,
                signed_manifest(&owner, id, "mlp", "1"),
                b"not onnx at all".to_vec()
            ),
            422
        ),
        "source_mismatch"
    );
    let garbage = b"not onnx at all".to_vec();
    let named = Manifest {
        model_id: id,
        name: "mlp".into(),
        version: "1".into(),
        description: String::new(),
        task: String::new(),
        license: String::new(),
        tags: vec![],
        owner: owner.address(),
        source_hash: keccak256(&garbage),
        report_hash: Hash::ZERO,
    };
    let named = serde_json::to_string(&named.sign(&owner)).expect("json");
    assert_eq!(
        error_code(publish_raw(u, named, garbage), 422),
        "compile_failed"
    );
    let big = vec![7u8; 700_000];
    let r = publish_raw(u, signed_manifest(&owner, id, "mlp", "1"), big);
    assert_eq!(error_code(r, 413), "too_large");
    assert_eq!(
        publish_raw(u, signed_manifest(&owner, id, "mlp", "1"), bytes.clone())
            .status()
            .as_u16(),
        201
    );
    let cnn = compile(tmp.path(), "cnn");
    let cnn_id = model_id_of(&cnn);
    let cnn_bytes = std::fs::read(&cnn).expect("cnn");
    assert_eq!(
        error_code(
            publish_raw(
                u,
                signed_manifest(&owner, cnn_id, "mlp", "1"),
                cnn_bytes.clone()
            ),
            409
        ),
        "version_taken"
    );
    assert_eq!(
        error_code(
            publish_raw(
                u,
                signed_manifest(&other, cnn_id, "mlp", "2"),
                cnn_bytes.clone()
            ),
            403
        ),
        "name_owned"
    );
    // a client that keeps connections open (as SDKs do): an error answer to a request whose body the
    // node did not read to its end closes its connection and says so, so the next request opens a new
    // one instead of failing with a reset
    let c = http();
    let multipart_missing = c
        .post(format!("{u}/v1/models"))
        .body("x")
        .send()
        .expect("s");
    assert_eq!(
        multipart_missing
            .headers()
            .get("connection")
            .and_then(|v| v.to_str().ok()),
        Some("close"),
        "an error answer to a request with a body closes the connection and says so"
    );
    assert_eq!(error_code(multipart_missing, 400), "bad_upload");

    // Inference: garbage 400, unknown model 404, wrong shape 422, wrong dtype 422, NaN 422, oversized
    // body 413, too many elements 413, unknown route 404.
    let infer = |body: Vec<u8>, model: &str| {
        c.post(format!("{u}/v1/models/{model}/infer"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("send")
    };
    assert_eq!(
        error_code(infer(b"{not json".to_vec(), "mlp"), 400),
        "malformed_request"
    );
    assert_eq!(
        error_code(
            infer(
                json!({"inputs": {"input": [[1.0]]}})
                    .to_string()
                    .into_bytes(),
                "nope"
            ),
            404
        ),
        "model_not_found"
    );
    assert_eq!(
        error_code(
            infer(
                json!({"inputs": {"input": [[1.0, 2.0]]}})
                    .to_string()
                    .into_bytes(),
                "mlp"
            ),
            422
        ),
        "shape_mismatch"
    );
    assert_eq!(
        error_code(
            infer(
                json!({"inputs": {"x": [[1.0]]}}).to_string().into_bytes(),
                "mlp"
            ),
            422
        ),
        "unknown_input"
    );
    assert_eq!(
        error_code(
            infer(json!({"inputs": {}}).to_string().into_bytes(), "mlp"),
            422
        ),
        "missing_input"
    );
    let mut huge = input_doc("mlp");
    huge["input"]["data"][0] = json!(1e30);
    assert_eq!(
        error_code(
            infer(json!({"inputs": huge}).to_string().into_bytes(), "mlp"),
            422
        ),
        "value_out_of_range"
    );
    let strs =
        json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["a"]}]});
    assert_eq!(
        error_code(infer(strs.to_string().into_bytes(), "mlp"), 422),
        "unsupported_tensor"
    );
    assert_eq!(
        error_code(infer(vec![b' '; 300_000], "mlp"), 413),
        "too_large"
    );
    let many = json!({"inputs": [{"name": "input", "shape": [1000, 1000], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}).to_string();
    let r = c
        .post(format!("{u}/v1/models/mlp/infer"))
        .header("Inference-Header-Content-Length", many.len().to_string())
        .body([many.as_bytes(), &[0u8; 4]].concat())
        .send()
        .expect("send");
    assert_eq!(error_code(r, 413), "too_large");
    assert_eq!(
        error_code(c.get(format!("{u}/v1/nothing")).send().expect("s"), 404),
        "no_route"
    );
    assert_eq!(
        error_code(
            c.get(format!("{u}/v1/receipts/0x12")).send().expect("s"),
            400
        ),
        "bad_request_id"
    );

    // KServe v2 errors use the protocol's `{"error": "<message>"}` with the stable code beside it.
    let r = c
        .post(format!("{u}/v2/models/nope/infer"))
        .body(json!({"inputs": []}).to_string())
        .send()
        .expect("send");
    assert_eq!(r.status().as_u16(), 404);
    let v: Value = r.json().expect("json");
    assert!(
        v["error"].as_str().is_some_and(|m| m.contains("nope")),
        "{v}"
    );
    assert_eq!(v["code"], "model_not_found");

    // A client that never finishes its headers is cut off after the header timeout.
    let addr = u.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        start.elapsed() < Duration::from_secs(9),
        "slow client was not cut off"
    );

    // The node is still healthy after all that.
    let ok = infer(
        json!({"inputs": input_doc("mlp")}).to_string().into_bytes(),
        "mlp",
    );
    assert_eq!(ok.status().as_u16(), 200);
}

#[test]
fn concurrent_requests_and_publishes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tmp.path().join("config.toml");
    std::fs::write(
        &cfg,
        "[limits]\nmax_concurrent_uploads = 8\nmax_uploads_per_ip = 8\n",
    )
    .expect("cfg");
    let node = NodeProc::start(
        &tmp.path().join("node"),
        &["--config", cfg.to_str().expect("p")],
    );
    let owner = SecretKey::random();
    let cnn = compile(tmp.path(), "cnn");
    let id = model_id_of(&cnn);
    let bytes = std::fs::read(&cnn).expect("cnn");
    // The same model published 6 times at once: exactly one creates it, the rest see it exists.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| {
                let (m, b, u) = (
                    signed_manifest(&owner, id, "cnn", "1"),
                    bytes.clone(),
                    node.url.clone(),
                );
                s.spawn(move || publish_raw(&u, m, b).status().as_u16())
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("join")).collect()
    });
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        5,
        "{statuses:?}"
    );

    // 16 identical requests in parallel: identical input/output hashes, deferred traces, distinct IDs.
    let body = json!({"inputs": input_doc("cnn")}).to_string();
    let receipts: Vec<SignedReceipt> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|_| {
                let (b, u) = (body.clone(), node.url.clone());
                s.spawn(move || {
                    let v: Value = http()
                        .post(format!("{u}/v1/models/cnn/infer"))
                        .header("content-type", "application/json")
                        .body(b)
                        .send()
                        .expect("send")
                        .json()
                        .expect("json");
                    serde_json::from_value::<SignedReceipt>(v["receipt"].clone()).expect("receipt")
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("join")).collect()
    });
    let first = receipts[0].receipt;
    let mut ids = std::collections::BTreeSet::new();
    for r in &receipts {
        r.verify().expect("valid");
        assert_eq!(r.receipt.result_hash(), first.result_hash());
        assert_eq!(
            r.receipt.trace_root,
            Hash::ZERO,
            "served receipts defer the trace (revealed only in a dispute)"
        );
        ids.insert(r.receipt.request_id);
    }
    assert_eq!(ids.len(), receipts.len());
}

/// Send the start of a multipart upload of `size` bytes and stop half-way (the connection stays open).
fn start_partial_upload(url: &str, manifest: &str, size: usize) -> TcpStream {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect");
    let boundary = "XBOUNDARYX";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n{manifest}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"; filename=\"m.vty\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let total = head.len() + size + format!("\r\n--{boundary}--\r\n").len();
    write!(
        s,
        "POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {total}\r\n\r\n{head}"
    )
    .expect("write");
    let mut b = b"VTY\x01".to_vec();
    b.resize(size / 2, 0x5a);
    s.write_all(&b).expect("write body");
    s.flush().expect("flush");
    s
}

#[test]
fn restart_keeps_models_and_kill9_during_upload_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("node");
    let mut node = NodeProc::start(&dir, &[]);
    let owner = SecretKey::random();
    let mlp = compile(tmp.path(), "mlp");
    let id = model_id_of(&mlp);
    assert_eq!(
        publish_raw(
            &node.url,
            signed_manifest(&owner, id, "mlp", "1"),
            std::fs::read(&mlp).expect("r")
        )
        .status()
        .as_u16(),
        201
    );
    let body = json!({"inputs": input_doc("mlp")}).to_string();
    let before: Value = http()
        .post(format!("{}/v1/models/mlp/infer", node.url))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .expect("s")
        .json()
        .expect("j");
    let rid = before["request_id"].as_str().expect("rid").to_string();

    // Graceful stop, restart: the model and the receipt are there.
    assert_eq!(node.terminate(), Some(0));
    let mut node = NodeProc::start(&dir, &[]);
    let r = http()
        .get(format!("{}/v1/receipts/{rid}", node.url))
        .send()
        .expect("s");
    assert_eq!(r.status().as_u16(), 200);
    let after: Value = http()
        .post(format!("{}/v1/models/mlp/infer", node.url))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .expect("s")
        .json()
        .expect("j");
    assert_eq!(
        after["receipt"]["receipt"]["output_hash"],
        before["receipt"]["receipt"]["output_hash"]
    );

    // While one upload is in progress (and the limit is one), another is refused with 503, not queued
    // in memory; the first is unaffected.
    assert_eq!(node.terminate(), Some(0));
    std::fs::write(
        dir.join("config.toml"),
        "[limits]\nmax_concurrent_uploads = 1\n",
    )
    .expect("cfg");
    let mut node = NodeProc::start(&dir, &[]);
    let cnn = compile(tmp.path(), "cnn");
    let cnn_id = model_id_of(&cnn);
    let slow = start_partial_upload(
        &node.url,
        &signed_manifest(&owner, cnn_id, "slow", "1"),
        1 << 20,
    );
    std::thread::sleep(Duration::from_millis(300));
    let busy = publish_raw(
        &node.url,
        signed_manifest(&owner, cnn_id, "cnn", "1"),
        std::fs::read(&cnn).expect("r"),
    );
    assert_eq!(error_code(busy, 503), "busy");
    drop(slow);
    std::thread::sleep(Duration::from_millis(300));
    let ok = publish_raw(
        &node.url,
        signed_manifest(&owner, cnn_id, "cnn", "1"),
        std::fs::read(&cnn).expect("r"),
    );
    assert_eq!(ok.status().as_u16(), 201);

    // kill -9 in the middle of a 40 MB upload.
    let _conn = start_partial_upload(
        &node.url,
        &signed_manifest(&owner, cnn_id, "big", "1"),
        40 << 20,
    );
    std::thread::sleep(Duration::from_millis(500));
    node.kill9();
    let chunks_before: usize = walk_files(&dir.join("chunks"));
    let node = NodeProc::start(&dir, &[]);
    let list: Value = http()
        .get(format!("{}/v1/models", node.url))
        .send()
        .expect("s")
        .json()
        .expect("j");
    let names: Vec<&str> = list["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, vec!["cnn", "mlp"], "exactly the acknowledged models");
    assert_eq!(
        walk_files(&dir.join("tmp")),
        0,
        "temporary files left behind"
    );
    // Chunks: only those of acknowledged models remain.
    let chunks_of = |m: &str| -> usize {
        let info: Value = http()
            .get(format!("{}/v1/models/{m}", node.url))
            .send()
            .expect("s")
            .json()
            .expect("j");
        info["chunks"].as_array().expect("c").len()
    };
    assert_eq!(
        walk_files(&dir.join("chunks")),
        chunks_of("mlp") + chunks_of("cnn")
    );
    assert!(chunks_before >= walk_files(&dir.join("chunks")));
    let again = http()
        .post(format!("{}/v1/models/mlp/infer", node.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .expect("s");
    assert_eq!(again.status().as_u16(), 200);
}

fn walk_files(p: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                walk_files(&p)
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn zk_mode_returns_a_proof_that_verifies_offline() {
    let tmp = tempfile::tempdir().expect("tmp");
    let node = NodeProc::start(&tmp.path().join("node"), &[]);
    let key = tmp.path().join("user.key");
    cli_ok(&node, &key, &["key", "new"]);
    let cnn = compile(tmp.path(), "cnn");
    let id = model_id_of(&cnn);
    cli_ok(
        &node,
        &key,
        &[
            "model",
            "publish",
            cnn.to_str().expect("p"),
            "--name",
            "cnn",
            "--version",
            "1",
        ],
    );
    // the verifying key: model ID and constants root
    let vk: Value = http()
        .get(format!("{}/v1/models/cnn/zk", node.url))
        .send()
        .expect("vk")
        .json()
        .expect("json");
    assert_eq!(vk["model_id"], json!(id));
    // HTTP: mode zk returns the outputs, the receipt and the proof of the same result
    let mut body = json!({"inputs": input_doc("cnn"), "mode": "zk"});
    let v: Value = http()
        .post(format!("{}/v1/models/cnn/infer", node.url))
        .json(&body)
        .send()
        .expect("infer")
        .json()
        .expect("json");
    assert_eq!(v["zk"]["weights_root"], vk["weights_root"], "{v}");
    assert_eq!(
        v["zk"]["output_hash"],
        v["receipt"]["receipt"]["output_hash"]
    );
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["zk"]["proof"].as_str().expect("proof"))
        .expect("base64");
    let file = verity_zk::ProofFile::from_bytes(&bytes).expect("proof file");
    let (model, mid) =
        verity_engine::vty::decode(&std::fs::read(&cnn).expect("vty")).expect("model");
    assert_eq!(file.model_id, mid);
    let vkey = verity_zk::VerifyingKey {
        model_id: mid,
        w_root: file.w_root,
    };
    verity_zk::verify(&model, &vkey, &file.inputs, &file.outputs, &file.proof).expect("verifies");
    // the CLI: infer --zk-proof writes the file; verify accepts it with the model and refuses a wrong one
    let proof = tmp.path().join("cnn.zk");
    cli_ok(
        &node,
        &key,
        &[
            "infer",
            "cnn",
            "--input",
            "fixtures/cnn.input.json",
            "--zk-proof",
            proof.to_str().expect("p"),
        ],
    );
    let ok: Value = serde_json::from_str(&cli_ok(
        &node,
        &key,
        &[
            "verify",
            proof.to_str().expect("p"),
            "--model",
            cnn.to_str().expect("p"),
        ],
    ))
    .expect("json");
    assert_eq!(ok["valid"], json!(true));
    let mlp = compile(tmp.path(), "mlp");
    let bad = cli(
        &node,
        &key,
        &[
            "verify",
            proof.to_str().expect("p"),
            "--model",
            mlp.to_str().expect("p"),
        ],
    );
    assert_eq!(
        bad.status.code(),
        Some(1),
        "a proof for another model is invalid"
    );
    let mut flipped = std::fs::read(&proof).expect("proof");
    let at = flipped.len() - 1000;
    flipped[at] ^= 1;
    std::fs::write(&proof, flipped).expect("write");
    let bad = cli(
        &node,
        &key,
        &[
            "verify",
            proof.to_str().expect("p"),
            "--model",
            cnn.to_str().expect("p"),
        ],
    );
    assert_eq!(bad.status.code(), Some(1), "a tampered proof is invalid");
    // an unknown mode is a 400 with a message
    body["mode"] = json!("fast");
    let resp = http()
        .post(format!("{}/v1/models/cnn/infer", node.url))
        .json(&body)
        .send()
        .expect("infer");
    assert_eq!(error_code(resp, 400), "malformed_request");
}

#[test]
fn node_logs_written_to_a_file_carry_no_colour_codes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = tmp.path().join("node.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_verity"))
        .args(["node", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("n"))
        .env("VERITY_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    assert!(line.contains("listening on"), "{line}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    assert!(status.success());
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("node started"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "colour codes in a log file: {text:?}"
    );
}

/// A quorum certificate made with fresh keys and a made-up output is consistent on its own; without a
/// chain or a trusted snapshot `verity verify` does not call it valid (exit 3, naming what is missing).
#[test]
fn a_certificate_checked_against_nothing_is_not_reported_valid() {
    use verity_chain::cert::{QuorumCertificate, RegistrySnapshot, SnapshotNode, CERT_VERSION};
    use verity_core::receipt::{receipt_domain, Receipt};
    let tmp = tempfile::tempdir().expect("tmp");
    let keys: Vec<verity_core::SecretKey> = (1..=3u8)
        .map(|i| verity_core::SecretKey::from_bytes(&[i; 32]).expect("key"))
        .collect();
    let registry = RegistrySnapshot {
        chain_id: 31337,
        block: 7,
        block_hash: verity_core::keccak256(b"any block"),
        nodes: keys
            .iter()
            .map(|k| SnapshotNode {
                address: k.address(),
                stake: "1000000000000000000".into(),
                endpoint: "http://fake".into(),
            })
            .collect(),
    };
    let request_id = verity_core::keccak256(b"r");
    let order = registry.draw(&request_id, 3).expect("draw");
    let domain = receipt_domain(31337, verity_core::Address([0x11; 20]));
    let receipt = |a: &verity_core::Address| {
        let k = keys.iter().find(|k| k.address() == *a).expect("key");
        Receipt {
            request_id,
            model_id: verity_core::keccak256(b"m"),
            input_hash: verity_core::keccak256(b"i"),
            output_hash: verity_core::keccak256(b"a fake output"),
            trace_root: verity_core::keccak256(b"t"),
            node: *a,
            timestamp: 1,
        }
        .sign(domain.clone(), k)
    };
    let cert = QuorumCertificate {
        version: CERT_VERSION,
        request_id,
        model_id: verity_core::keccak256(b"m"),
        input_hash: verity_core::keccak256(b"i"),
        output_hash: verity_core::keccak256(b"a fake output"),
        k: 3,
        registry: registry.clone(),
        receipts: order.iter().map(receipt).collect(),
        dissent: vec![],
    };
    verity_chain::cert::verify_certificate(&cert).expect("consistent on its own");
    let path = tmp.path().join("cert.json");
    std::fs::write(&path, serde_json::to_vec(&cert).expect("json")).expect("write");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_verity"))
            .arg("verify")
            .arg(&path)
            .args(extra)
            .output()
            .expect("verify")
    };
    let o = run(&[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(
        out.contains("not verified") && out.contains("--chain"),
        "{out}"
    );
    assert!(!out.contains("valid quorum certificate"), "{out}");
    let o = run(&["--unauthenticated"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("UNAUTHENTICATED"), "{out}");
    // a snapshot file is trusted only for the block hash the user gives
    let snap = tmp.path().join("snapshot.json");
    std::fs::write(&snap, serde_json::to_vec(&registry).expect("json")).expect("write");
    let o = run(&["--registry", snap.to_str().expect("p")]);
    assert_eq!(o.status.code(), Some(2), "--registry needs --block-hash");
    let other = verity_core::keccak256(b"the block I know").to_string();
    let o = run(&[
        "--registry",
        snap.to_str().expect("p"),
        "--block-hash",
        &other,
    ]);
    assert_eq!(o.status.code(), Some(1), "another block hash: invalid");
    let right = registry.block_hash.to_string();
    let o = run(&[
        "--registry",
        snap.to_str().expect("p"),
        "--block-hash",
        &right,
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.starts_with("valid quorum certificate"), "{out}");
}
