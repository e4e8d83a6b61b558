//! End-to-end tests of the `verity` binary on the bundled fixtures: golden model IDs and hashes,
//! agreement with onnxruntime's outputs, determinism across executors and threads, traces, and errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use verity_core::{elements_root, Hash};

mod attacks;
mod devnet;
mod dispute;
mod hostile;
mod llm;
mod node;
mod onestep;
mod quorum;
mod replicate;
mod watch;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

fn verity(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_verity"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run verity")
}

fn ok(args: &[&str]) -> String {
    let o = verity(args);
    assert!(
        o.status.success(),
        "verity {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("utf-8 output")
}

/// Run a command that must fail; return its one-line error.
fn fails(args: &[&str]) -> String {
    let o = verity(args);
    assert!(
        !o.status.success(),
        "verity {args:?} unexpectedly succeeded"
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).expect("utf-8");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "error is not one line: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn json_file(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).expect("read json")).expect("parse json")
}

fn manifest() -> Vec<(String, Vec<String>, bool)> {
    let m = json_file(&root().join("fixtures/manifest.json"));
    m.as_object()
        .expect("manifest object")
        .iter()
        .map(|(k, v)| {
            let flags = v["flags"]
                .as_array()
                .expect("flags")
                .iter()
                .map(|f| f.as_str().expect("str").to_string())
                .collect();
            (k.clone(), flags, v["classifier"].as_bool().unwrap_or(false))
        })
        .collect()
}

fn compile_fixture(dir: &Path, name: &str, flags: &[String]) -> PathBuf {
    let out = dir.join(format!("{name}.vty"));
    let onnx = format!("fixtures/{name}.onnx");
    let report = dir.join(format!("{name}.report.json"));
    let mut args = vec![
        "model",
        "compile",
        &onnx,
        "-o",
        out.to_str().expect("path"),
        "--report",
        report.to_str().expect("path"),
    ];
    args.extend(flags.iter().map(String::as_str));
    ok(&args);
    out
}

/// A JSON array of numbers.
fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

fn argmax(x: &[f64]) -> usize {
    x.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

#[test]
fn fixtures_match_golden_vectors_and_onnxruntime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let golden = json_file(&root().join("fixtures/golden.json"));
    for (name, flags, classifier) in manifest() {
        let vty = compile_fixture(dir.path(), &name, &flags);
        let input = format!("fixtures/{name}.input.json");
        let r: Value =
            serde_json::from_str(&ok(&["run", vty.to_str().unwrap(), "--input", &input])).unwrap();
        let g = &golden[&name];
        for key in ["model_id", "input_hash", "output_hash"] {
            assert_eq!(
                r[key], g[key],
                "{name}: {key} differs from the golden vector"
            );
        }
        // onnxruntime's float outputs, within the quantization tolerance
        let expected = json_file(&root().join(format!("fixtures/{name}.expected.json")));
        let report = json_file(&dir.path().join(format!("{name}.report.json")));
        for (out, want) in expected.as_object().unwrap() {
            let got = floats(&r["outputs"][out]["data"]);
            let want = floats(&want["data"]);
            assert_eq!(got.len(), want.len());
            let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let err = got
                .iter()
                .zip(&want)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= 2e-3 * scale,
                "{name}/{out}: max error {err} against onnxruntime"
            );
            if classifier {
                assert_eq!(
                    argmax(&got),
                    argmax(&want),
                    "{name}/{out}: top-1 differs from onnxruntime"
                );
            }
            let reported = report["report"]["outputs"][0]["max_relative_error"]
                .as_f64()
                .unwrap();
            assert!(
                reported < 2e-3,
                "{name}: reported relative error {reported}"
            );
            // the error against onnxruntime on this input stays within twice what the compile report
            // measured against tract on the calibration inputs
            let reported_abs = report["report"]["outputs"][0]["max_abs_error"]
                .as_f64()
                .unwrap();
            assert!(
                err <= 2.0 * reported_abs + 1e-6 * scale,
                "{name}/{out}: {err} vs reported {reported_abs}"
            );
        }
    }
}

#[test]
fn identical_bits_across_executors_threads_and_repeats() {
    let dir = tempfile::tempdir().unwrap();
    for (name, flags, _) in manifest() {
        let vty = compile_fixture(dir.path(), &name, &flags);
        let v = vty.to_str().unwrap();
        let input = format!("fixtures/{name}.input.json");
        let mut hashes = std::collections::BTreeSet::new();
        let mut traces = std::collections::BTreeSet::new();
        for extra in [
            vec!["--reference"],
            vec!["--threads", "1"],
            vec!["--threads", "2"],
            vec!["--threads", "4"],
            vec![],
        ] {
            let t = dir.path().join("t.json");
            let mut args = vec!["run", v, "--input", &input, "--trace", t.to_str().unwrap()];
            args.extend(extra);
            let r: Value = serde_json::from_str(&ok(&args)).unwrap();
            hashes.insert(r["output_hash"].to_string());
            traces.insert(r["trace_root"].to_string());
        }
        assert_eq!(hashes.len(), 1, "{name}: output hashes differ: {hashes:?}");
        assert_eq!(traces.len(), 1, "{name}: trace roots differ: {traces:?}");
    }
}

#[test]
fn trace_file_commits_to_every_tensor() {
    let dir = tempfile::tempdir().unwrap();
    // the fixture's golden vectors are those of its 32-bit model
    let vty = compile_fixture(
        dir.path(),
        "transformer",
        &["--precision".into(), "i32".into()],
    );
    let t = dir.path().join("trace.json");
    let r: Value = serde_json::from_str(&ok(&[
        "run",
        vty.to_str().unwrap(),
        "--input",
        "fixtures/transformer.input.json",
        "--trace",
        t.to_str().unwrap(),
    ]))
    .unwrap();
    let trace = json_file(&t);
    let golden = json_file(&root().join("fixtures/golden.json"));
    assert_eq!(trace["trace_root"], golden["transformer"]["trace_root"]);
    assert_eq!(trace["trace_root"], r["trace_root"]);
    let tensors = trace["tensors"].as_array().unwrap();
    let inspect: Value =
        serde_json::from_str(&ok(&["model", "inspect", vty.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(
        tensors.len(),
        1 + inspect["nodes"].as_array().unwrap().len()
    );
    let mut roots = Vec::new();
    for t in tensors {
        let data: Vec<i32> = t["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i32)
            .collect();
        let n: u64 = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .product();
        assert_eq!(data.len() as u64, n);
        let root = elements_root(&data);
        assert_eq!(Value::String(root.to_hex()), t["root"]);
        roots.push(root);
    }
    let recomputed: Hash = verity_engine::vty::list_root(&roots);
    assert_eq!(Value::String(recomputed.to_hex()), trace["trace_root"]);
}

#[test]
fn compiling_twice_gives_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let a = compile_fixture(dir.path(), "cnn", &["--input-range".into(), "0:1".into()]);
    let first = std::fs::read(&a).unwrap();
    let b = compile_fixture(dir.path(), "cnn", &["--input-range".into(), "0:1".into()]);
    assert_eq!(first, std::fs::read(b).unwrap());
}

#[test]
fn npy_and_json_inputs_agree_and_inspect_describes_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let vty = compile_fixture(dir.path(), "mlp", &["--input-range".into(), "0:1".into()]);
    let v = vty.to_str().unwrap();
    let doc = json_file(&root().join("fixtures/mlp.input.json"));
    let t = verity_engine::io::tensor_from_json(&doc["input"]).unwrap();
    let npy = dir.path().join("in.npy");
    std::fs::write(&npy, verity_engine::io::tensor_to_npy(&t)).unwrap();
    let a: Value =
        serde_json::from_str(&ok(&["run", v, "--input", "fixtures/mlp.input.json"])).unwrap();
    let b: Value =
        serde_json::from_str(&ok(&["run", v, "--input", npy.to_str().unwrap()])).unwrap();
    assert_eq!(a["output_hash"], b["output_hash"]);
    let text = ok(&["model", "inspect", v]);
    assert!(text.contains(a["model_id"].as_str().unwrap()));
    assert!(text.contains("EinSum"));
    assert!(text.contains("input       input [1, 784]"));
}

#[test]
fn bad_models_and_inputs_get_one_clear_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let out = d("x.vty");
    // malformed, truncated, unsupported, unfixable shapes
    std::fs::write(d("garbage.onnx"), b"definitely not protobuf").unwrap();
    assert!(fails(&["model", "compile", &d("garbage.onnx"), "-o", &out])
        .contains("cannot load the ONNX model"));
    let mlp = std::fs::read(root().join("fixtures/mlp.onnx")).unwrap();
    std::fs::write(d("trunc.onnx"), &mlp[..mlp.len() / 3]).unwrap();
    assert!(fails(&["model", "compile", &d("trunc.onnx"), "-o", &out])
        .contains("cannot load the ONNX model"));
    let e = fails(&[
        "model",
        "compile",
        "fixtures/unsupported_op.onnx",
        "-o",
        &out,
    ]);
    assert!(e.contains("Atan") && e.contains("the_arctangent"), "{e}");
    assert!(
        fails(&["model", "compile", "fixtures/no_shape.onnx", "-o", &out])
            .contains("dynamic shape")
    );
    assert!(
        fails(&["model", "compile", "fixtures/missing.onnx", "-o", &out]).contains("cannot read")
    );
    assert!(fails(&[
        "model",
        "compile",
        "fixtures/mlp.onnx",
        "-o",
        &out,
        "--scale-bits",
        "40"
    ])
    .contains("scale bits"));
    assert!(
        !Path::new(&out).exists(),
        "a failed compile left a file behind"
    );
    // a symbolic batch dimension is fixed to 1, or to what --input-shape says
    ok(&[
        "model",
        "compile",
        "fixtures/dynamic_batch.onnx",
        "-o",
        &out,
        "--input-shape",
        "x=3,8",
    ]);
    let i: Value = serde_json::from_str(&ok(&["model", "inspect", &out, "--json"])).unwrap();
    assert_eq!(i["inputs"][0]["shape"], serde_json::json!([3, 8]));

    let vty = compile_fixture(dir.path(), "mlp", &[]);
    let v = vty.to_str().unwrap();
    let write = |f: &str, s: String| {
        std::fs::write(d(f), s).unwrap();
        d(f)
    };
    let wrong_shape = write("ws.json", r#"{"input": [[1, 2, 3]]}"#.into());
    assert!(fails(&["run", v, "--input", &wrong_shape]).contains("must have shape [1, 784]"));
    let wrong_name = write("wn.json", r#"{"pixels": [[1]]}"#.into());
    assert!(fails(&["run", v, "--input", &wrong_name]).contains("no input named 'pixels'"));
    let nan = write(
        "nan.json",
        format!(
            r#"{{"input": {{"shape": [1, 784], "data": ["NaN"{}]}}}}"#,
            ", 0".repeat(783)
        ),
    );
    assert!(fails(&["run", v, "--input", &nan]).contains("not a finite number"));
    let big = write(
        "big.json",
        format!(
            r#"{{"input": {{"shape": [1, 784], "data": [1e12{}]}}}}"#,
            ", 0".repeat(783)
        ),
    );
    assert!(fails(&["run", v, "--input", &big]).contains("representable range"));
    let garbage = write("g.json", "{not json".into());
    assert!(fails(&["run", v, "--input", &garbage]).contains("bad tensor JSON"));
    let ints = write("ints.json", r#"{"tokens": {"shape": [1, 16], "data": [0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]}}"#.into());
    let tvty = compile_fixture(dir.path(), "transformer", &[]);
    assert!(
        fails(&["run", tvty.to_str().unwrap(), "--input", &ints]).contains("not a 32-bit integer")
    );
    let oob = write("oob.json", r#"{"tokens": {"shape": [1, 16], "data": [500, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]}}"#.into());
    assert!(fails(&["run", tvty.to_str().unwrap(), "--input", &oob]).contains("out of range"));
    // corrupted and truncated .vty files
    let mut bytes = std::fs::read(&vty).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(d("corrupt.vty"), &bytes).unwrap();
    assert!(fails(&[
        "run",
        &d("corrupt.vty"),
        "--input",
        "fixtures/mlp.input.json"
    ])
    .contains("not a valid model"));
    std::fs::write(d("short.vty"), &bytes[..100]).unwrap();
    assert!(
        fails(&["run", &d("short.vty"), "--input", "fixtures/mlp.input.json"])
            .contains("malformed .vty")
    );
    assert!(fails(&["model", "inspect", "fixtures/mlp.onnx"]).contains("not a .vty file"));
}

#[test]
fn external_tensor_data_compiles_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ext.vty");
    let text = ok(&[
        "model",
        "compile",
        "fixtures/digits_external.onnx",
        "-o",
        out.to_str().unwrap(),
        "--calibration",
        "fixtures/digits.calibration.npy",
        "--eval",
        "fixtures/digits.eval.npy",
        "--precision",
        "i32",
    ]);
    let golden = json_file(&root().join("fixtures/golden.json"));
    assert!(
        text.contains(golden["digits"]["model_id"].as_str().unwrap()),
        "{text}"
    );
}

#[test]
fn a_closed_output_pipe_ends_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vty = compile_fixture(dir.path(), "transformer", &[]);
    // the reader is gone before the listing is written (as with `| head -0`): the pipe's read end is
    // closed before the process starts, so no write can land in the pipe's buffer first
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_verity"))
        .args(["model", "inspect", vty.to_str().unwrap()])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run verity");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.status.success(), "the listing could not be written");
}

#[test]
fn the_default_int8_precision_compiles_smaller_models_that_run_on_both_executors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wide = compile_fixture(
        dir.path(),
        "cnn",
        &[
            "--input-range".into(),
            "0:1".into(),
            "--precision".into(),
            "i32".into(),
        ],
    );
    let out = dir.path().join("cnn8.vty");
    let compile_at = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "model",
            "compile",
            "fixtures/cnn.onnx",
            "-o",
            out.to_str().unwrap(),
            "--input-range",
            "0:1",
        ];
        a.extend_from_slice(extra);
        ok(&a)
    };
    let printed = compile_at(&out, &[]);
    assert!(printed.contains("precision int8"), "{printed}");
    // the default is int8: naming it gives the same file
    let named = dir.path().join("named.vty");
    compile_at(&named, &["--precision", "int8"]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&named).unwrap());
    let (n8, n32) = (
        std::fs::metadata(&out).unwrap().len(),
        std::fs::metadata(&wide).unwrap().len(),
    );
    assert!(n8 < n32, "{n8} vs {n32}");
    // the fast and the reference executor agree on the 8-bit model, and the answer is the fixture's class
    let run = |extra: &[&str]| -> Value {
        let mut a = vec![
            "run",
            out.to_str().unwrap(),
            "--input",
            "fixtures/cnn.input.json",
        ];
        a.extend_from_slice(extra);
        serde_json::from_str(&ok(&a)).unwrap()
    };
    let (fast, reference) = (run(&["--threads", "2"]), run(&["--reference"]));
    assert_eq!(fast["output_hash"], reference["output_hash"]);
    let expected = json_file(&root().join("fixtures/cnn.expected.json"));
    let (name, want) = expected.as_object().unwrap().iter().next().unwrap();
    assert_eq!(
        argmax(&floats(&fast["outputs"][name]["data"])),
        argmax(&floats(&want["data"]))
    );
    // an unknown precision, or widths outside the choices, is a usage error that names the choices
    for bad in [
        "int3", "w2a8", "w4a4", "w8a32", "w8", "wxa8", "w8a8dd", "w+8a8", "auto:0", "auto:x",
        "auto:150",
    ] {
        let o = verity(&[
            "model",
            "compile",
            "fixtures/cnn.onnx",
            "-o",
            out.to_str().unwrap(),
            "--precision",
            bad,
        ]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad}: {e}");
        assert!(
            e.contains("i32, int8, int4, auto, auto:<percent>"),
            "{bad}: {e}"
        );
        assert!(e.contains("wXaY[d]"), "{bad}: {e}");
    }
    // auto at a target int8 misses: the contractions it widened, printed and in the JSON report
    let auto = dir.path().join("auto.vty");
    let report = dir.path().join("auto.json");
    let printed = compile_at(
        &auto,
        &[
            "--precision",
            "auto:0.2",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert!(printed.contains("precision auto:0.2"), "{printed}");
    assert!(
        printed.contains("contractions with a 12-bit operand"),
        "{printed}"
    );
    let mixed = &json_file(&report)["report"]["mixed"];
    let wide = mixed["wide"].as_array().expect("the widened contractions");
    assert!(!wide.is_empty(), "{mixed}");
    assert!(wide
        .iter()
        .all(|w| w["weight_bits"] == 12 || w["activation_bits"] == 12));
    assert!(mixed["int8_error"].as_f64().unwrap() > 0.002, "{mixed}");
    let (fast, reference) = (
        ok(&[
            "run",
            auto.to_str().unwrap(),
            "--input",
            "fixtures/cnn.input.json",
        ]),
        ok(&[
            "run",
            auto.to_str().unwrap(),
            "--input",
            "fixtures/cnn.input.json",
            "--reference",
        ]),
    );
    let hash = |t: &str| serde_json::from_str::<Value>(t).unwrap()["output_hash"].clone();
    assert_eq!(hash(&fast), hash(&reference));
}

#[test]
fn negative_input_ranges_are_taken_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.vty");
    let b = dir.path().join("b.vty");
    let mlp = root().join("fixtures/mlp.onnx");
    let mlp = mlp.to_str().unwrap();
    ok(&[
        "model",
        "compile",
        mlp,
        "-o",
        a.to_str().unwrap(),
        "--input-range",
        "-3:3",
    ]);
    ok(&[
        "model",
        "compile",
        mlp,
        "-o",
        b.to_str().unwrap(),
        "--input-range=-3:3",
    ]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}
