//! Hostile clients against real node processes: model bombs (CPU, memory, ONNX compile), silent and
//! trickling connections, oversize and unauthenticated uploads, abandoned and timed-out inferences,
//! SIGTERM and kill -9 under load. Each test asserts that the node refuses or bounds the attack, keeps
//! answering a valid request while it goes on, and exits cleanly when told to.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use verity_core::{keccak256, Hash, Manifest, SecretKey};
use verity_engine::ir::*;

use super::node::{http, publish_raw, signed_manifest, NodeProc};
use super::root;

/// Start a node on `dir` with `config` (TOML) written to its `config.toml`.
fn start(dir: &Path, config: &str) -> NodeProc {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.toml"), config).unwrap();
    NodeProc::start(dir, &[])
}

/// [`start`], then publish the tiny model with a fresh key: the node, the key and the tiny model's ID.
fn start_with_tiny(dir: &Path, config: &str) -> (NodeProc, SecretKey, Hash) {
    let n = start(dir, config);
    let key = SecretKey::random();
    let tiny = tiny_model();
    let id = id_of(&tiny);
    assert_eq!(publish(&n.url, &key, tiny, "tiny").status().as_u16(), 201);
    (n, key, id)
}

fn input(name: &str, shape: Vec<u32>) -> Input {
    Input {
        name: name.into(),
        shape,
        scale: 0,
        kind: InputKind::Fixed,
    }
}

fn node(name: &str, op: Op, inputs: Vec<u32>, shape: Vec<u32>) -> Node {
    Node {
        name: name.into(),
        op,
        inputs,
        shape,
        scale: 0,
    }
}

fn matmul() -> Op {
    Op::EinSum {
        a: b"ik".to_vec(),
        b: b"kj".to_vec(),
        out: b"ij".to_vec(),
    }
}

/// One element broadcast to `n × n`, multiplied by itself, and the first row (or, `reduce`, everything)
/// kept, the product and what is kept at scale `scale`: a few hundred bytes describing `n³`
/// multiply-accumulates.
fn square_model(n: u32, reduce: bool, scale: i8) -> Vec<u8> {
    let kept = if reduce {
        node(
            "sum",
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes: vec![0, 1],
            },
            vec![2],
            vec![1, 1],
        )
    } else {
        node(
            "row",
            Op::Slice {
                axis: 0,
                start: 0,
                end: 1,
                step: 1,
            },
            vec![2],
            vec![1, n],
        )
    };
    let mut nodes = vec![
        node("b", Op::Broadcast, vec![0], vec![n, n]),
        node("mm", matmul(), vec![1, 1], vec![n, n]),
        kept,
    ];
    for later in &mut nodes[1..] {
        later.scale = scale;
    }
    let m = Model {
        inputs: vec![input("x", vec![1, 1])],
        consts: vec![],
        nodes,
        outputs: vec![Output {
            name: "y".into(),
            value: 3,
        }],
    };
    m.validate().unwrap();
    verity_engine::vty::encode(&m)
}

/// A model that runs for many seconds on any CPU, and the body of a request for it: [`square_model`]
/// at 4096 over an input of 10⁷, whose products (10¹⁴, summed to 4·10¹⁷) only the 64-bit integer
/// kernels take — neither the 8-bit ones (whatever their instruction set) nor the exact `f64` ones
/// (sums past 2⁵³) —, scaled by 2⁻²⁹ back into `i32`. (16-bit values would not do: AVX-512 VNNI
/// multiplies them as two 8-bit halves, and 3072³ of them finish inside the tests' 3 s timeout.)
fn slow_model() -> (Vec<u8>, String) {
    let body = json!({"inputs": {"x": {"shape": [1, 1], "data": [1.0e7]}}});
    (square_model(4096, false, -29), body.to_string())
}

/// One intermediate of 2³¹ − 2¹⁶ elements (8 GiB as i32).
fn memory_bomb() -> Vec<u8> {
    let m = Model::one_node(
        vec![input("x", vec![1, 1])],
        vec![],
        Op::Broadcast,
        vec![0],
        vec![32767, 65536],
        0,
    );
    m.validate().unwrap();
    verity_engine::vty::encode(&m)
}

/// A model answering in microseconds: `x + 1`.
fn tiny_model() -> Vec<u8> {
    let m = Model::one_node(
        vec![input("x", vec![1, 4])],
        vec![Const {
            shape: vec![1, 4],
            scale: 0,
            data: vec![1; 4].into(),
        }],
        Op::Add,
        vec![0, 1],
        vec![1, 4],
        0,
    );
    verity_engine::vty::encode(&m)
}

fn id_of(bytes: &[u8]) -> Hash {
    verity_engine::vty::decode(bytes).unwrap().1
}

fn publish(url: &str, key: &SecretKey, bytes: Vec<u8>, name: &str) -> reqwest::blocking::Response {
    publish_raw(
        url,
        signed_manifest(key, id_of(&bytes), name, "1.0.0"),
        bytes,
    )
}

fn error_of(resp: reqwest::blocking::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().unwrap_or(Value::Null);
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
        v["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

/// A valid inference of the tiny model: asserts it succeeds and returns how long it took.
fn valid_inference(url: &str, id: &Hash) -> Duration {
    let t = Instant::now();
    let r = http()
        .post(format!("{url}/v1/models/{id}/infer"))
        .json(&json!({"inputs": {"x": {"shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}}}))
        .send()
        .expect("valid inference");
    let status = r.status().as_u16();
    let v: Value = r.json().unwrap_or(Value::Null);
    assert_eq!(status, 200, "valid inference failed: {v}");
    assert_eq!(v["outputs"][0]["data"], json!([2.0, 3.0, 4.0, 5.0]));
    t.elapsed()
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Whether the server closes `s` within `within` (reads EOF or a reset).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn onnx_manifest(key: &SecretKey, onnx: &[u8], model_id: Hash) -> String {
    let m = Manifest {
        model_id,
        name: "bomb".into(),
        version: "1.0.0".into(),
        description: String::new(),
        task: String::new(),
        license: String::new(),
        tags: vec![],
        owner: key.address(),
        source_hash: keccak256(onnx),
        report_hash: Hash::ZERO,
    };
    serde_json::to_string(&m.sign(key)).unwrap()
}

fn metrics(url: &str) -> String {
    http()
        .get(format!("{url}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

#[test]
fn model_bombs_are_refused_at_publish_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (n, key, tiny_id) = start_with_tiny(
        dir.path(),
        "[limits]\nmax_compile_bytes = 1073741824\n[timeouts]\ncompile_secs = 60\n",
    );
    valid_inference(&n.url, &tiny_id);

    // CPU: 16384³ multiply-accumulates in 200-odd bytes
    let cpu = square_model(16384, true, 0);
    assert!(cpu.len() < 400, "{} bytes", cpu.len());
    let t = Instant::now();
    let (status, code, msg) = error_of(publish(&n.url, &key, cpu.clone(), "cpu"));
    assert_eq!((status, code.as_str()), (422, "over_limit"), "{msg}");
    assert!(
        msg.contains("multiply-accumulates") && msg.contains("max_macs"),
        "{msg}"
    );
    eprintln!(
        "CPU bomb ({} bytes) refused in {:?}: {msg}",
        cpu.len(),
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    // memory: one 2³¹-element intermediate
    let t = Instant::now();
    let (status, code, msg) = error_of(publish(&n.url, &key, memory_bomb(), "mem"));
    eprintln!("memory bomb refused in {:?}: {msg}", t.elapsed());
    assert_eq!((status, code.as_str()), (422, "over_limit"), "{msg}");
    assert!(
        msg.contains("max_memory_bytes") || msg.contains("max_trace_bytes"),
        "{msg}"
    );
    // neither is stored nor can be run
    let models: Value = http()
        .get(format!("{}/v1/models", n.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["models"].as_array().unwrap().len(), 1, "{models}");
    let r = http()
        .post(format!("{}/v1/models/{}/infer", n.url, id_of(&cpu)))
        .json(&json!({"inputs": {"x": {"shape": [1, 1], "data": [1.0]}}}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // ONNX: a manifest signed for another model is refused before anything is compiled
    let bomb = std::fs::read(root().join("fixtures/expand_bomb.onnx")).unwrap();
    let other = signed_manifest(&key, Hash([9; 32]), "bomb", "1.0.0");
    let t = Instant::now();
    let (status, code, msg) = error_of(publish_raw(&n.url, other, bomb.clone()));
    assert_eq!((status, code.as_str()), (422, "source_mismatch"), "{msg}");
    eprintln!(
        "ONNX bomb with another model's manifest refused in {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    // signed for this very file: refused by the graph-size bound before any evaluation
    let t = Instant::now();
    let m = onnx_manifest(&key, &bomb, Hash([9; 32]));
    let (status, code, msg) = error_of(publish_raw(&n.url, m, bomb));
    assert_eq!((status, code.as_str()), (422, "compile_failed"), "{msg}");
    assert!(msg.contains("elements"), "{msg}");
    eprintln!(
        "ONNX bomb signed for itself refused in {:?}: {msg}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    // a constant folded by the ONNX front-end into 2²⁸ elements: stopped by the memory budget
    let folded = std::fs::read(root().join("fixtures/const_expand_bomb.onnx")).unwrap();
    let m = onnx_manifest(&key, &folded, Hash([9; 32]));
    let (publish_result, during) = std::thread::scope(|s| {
        let url = n.url.clone();
        let h = s.spawn(move || error_of(publish_raw(&url, m, folded)));
        // the node answers while the compiler struggles
        let mut worst = Duration::ZERO;
        for _ in 0..5 {
            worst = worst.max(valid_inference(&n.url, &tiny_id));
            std::thread::sleep(Duration::from_millis(100));
        }
        (h.join().unwrap(), worst)
    });
    let (status, code, msg) = publish_result;
    eprintln!("folded-constant ONNX bomb: {msg}");
    assert_eq!((status, code.as_str()), (422, "compile_failed"), "{msg}");
    assert!(
        msg.contains("max_compile_bytes") || msg.contains("elements"),
        "{msg}"
    );
    eprintln!("valid inference during the ONNX bomb: at most {during:?}");
    // a bound, not a speed claim: the node answers while the bomb is being handled (these machines are
    // shared by the whole test suite)
    assert!(during < Duration::from_secs(30), "{during:?}");
    // no upload is left behind, and the node still serves
    let uploads = dir.path().join("uploads");
    let left = std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "files left in {}", uploads.display());
    valid_inference(&n.url, &tiny_id);
    // the cost of the model it hosts is exported per model
    let text = metrics(&n.url);
    assert!(
        text.contains(&format!("verity_model_macs{{model=\"{tiny_id}\"}} 0")),
        "{text}"
    );
    assert!(text.contains(&format!(
        "verity_model_element_ops{{model=\"{tiny_id}\"}} 4"
    )));
}

#[test]
fn abandoned_and_timed_out_inferences_free_their_worker() {
    let dir = tempfile::tempdir().unwrap();
    // one worker; a 3 s request timeout; estimates that let the slow model in
    let (mut n, key, tiny_id) = start_with_tiny(
        dir.path(),
        "workers = 1\n[limits]\nassumed_ops_per_sec = 1000000000000\n[timeouts]\nrequest_secs = 3\ncompile_secs = 1\n",
    );
    // 4096³ products on the 64-bit kernels: far longer than 3 s
    let (slow, slow_body) = slow_model();
    let slow_id = id_of(&slow);
    assert_eq!(publish(&n.url, &key, slow, "slow").status().as_u16(), 201);

    // timed out: 408 at the deadline; the worker is free right after
    let t = Instant::now();
    let (status, code, _) = error_of(
        http()
            .post(format!("{}/v1/models/{slow_id}/infer", n.url))
            .header("content-type", "application/json")
            .body(slow_body.clone())
            .send()
            .unwrap(),
    );
    assert_eq!((status, code.as_str()), (408, "timeout"));
    let after_timeout = valid_inference(&n.url, &tiny_id);
    eprintln!(
        "timed out after {:?}; next inference {after_timeout:?}",
        t.elapsed()
    );
    // the slow run takes many seconds more; the worker is free long before it would have finished
    assert!(after_timeout < Duration::from_secs(5), "{after_timeout:?}");

    // abandoned: the client sends the request and goes away; the run stops
    for _ in 0..2 {
        let mut s = TcpStream::connect(host_port(&n.url)).unwrap();
        write!(
            s,
            "POST /v1/models/{slow_id}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{slow_body}",
            slow_body.len()
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(s);
    }
    let after_abandon = valid_inference(&n.url, &tiny_id);
    eprintln!("after two abandoned runs: {after_abandon:?}");
    assert!(after_abandon < Duration::from_secs(5), "{after_abandon:?}");

    // a model known (from its stopped runs) to need longer than the timeout is refused at once
    let burst: Vec<_> = (0..3)
        .map(|_| {
            let (url, body) = (n.url.clone(), slow_body.clone());
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = http()
                    .post(format!("{url}/v1/models/{slow_id}/infer"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .unwrap();
                (r.status().as_u16(), t.elapsed())
            })
        })
        .collect();
    let results: Vec<(u16, Duration)> = burst.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        results
            .iter()
            .all(|(s, t)| *s == 503 && *t < Duration::from_secs(3)),
        "{results:?}"
    );
    valid_inference(&n.url, &tiny_id);
    let text = metrics(&n.url);
    assert!(text.contains("verity_in_flight 0"), "{text}");

    // a compilation over its time budget is stopped: its process is gone and the upload refused
    let folded = std::fs::read(root().join("fixtures/const_expand_bomb.onnx")).unwrap();
    let m = onnx_manifest(&key, &folded, Hash([9; 32]));
    let t = Instant::now();
    let (status, code, msg) = error_of(publish_raw(&n.url, m, folded));
    eprintln!("compilation stopped after {:?}: {msg}", t.elapsed());
    assert_eq!(status, 422, "{msg}");
    assert!(
        code == "compile_timeout" || msg.contains("max_compile_bytes"),
        "{code}: {msg}"
    );
    let uploads = dir.path().join("uploads");
    let compiling = super::devnet::find_process(|args| {
        args.iter()
            .any(|a| a.starts_with(uploads.to_str().unwrap()))
    });
    assert!(compiling.is_none(), "compiler still running: {compiling:?}");
    valid_inference(&n.url, &tiny_id);
    assert_eq!(n.terminate(), Some(0));
}

#[test]
fn silent_trickling_and_oversize_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (n, key, tiny_id) = start_with_tiny(
        dir.path(),
        "[limits]\nmax_connections_per_ip = 8\nmin_upload_bytes_per_sec = 65536\n[timeouts]\nheader_secs = 3\n",
    );
    let tiny = tiny_model();
    let addr = host_port(&n.url);

    // silent connections are closed after the header timeout; an idle keep-alive one too
    let mut silent = TcpStream::connect(&addr).unwrap();
    let mut idle = TcpStream::connect(&addr).unwrap();
    write!(idle, "GET /v1/node HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(8)));
    assert!(closed_within(&mut idle, Duration::from_secs(8)));
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );

    // at most 8 connections per address: of 9 opened at once, one is closed at accept (well before the
    // others' header timeout), and a valid request gets in once another is gone
    let mut held: Vec<TcpStream> = (0..9).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let closed: Vec<usize> = (0..held.len())
        .filter(|&i| closed_within(&mut held[i], Duration::from_millis(50)))
        .collect();
    assert_eq!(closed.len(), 1, "closed at once: {closed:?}");
    held.remove(closed[0]);
    held.pop();
    std::thread::sleep(Duration::from_millis(200));
    assert!(metrics(&n.url).contains("verity_rejected_connections_total 1"));
    let during = valid_inference(&n.url, &tiny_id);
    eprintln!("valid inference beside 7 silent connections: {during:?}");
    drop(held);

    // a trickling upload holds its slot only until it falls behind the minimum rate; meanwhile the
    // same address cannot start a second upload, and inference goes on
    let manifest = signed_manifest(&key, id_of(&tiny), "trickle", "1.0.0");
    let boundary = "XBOUNDARYX";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n{manifest}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n"
    );
    let total = head.len() + tiny.len() + boundary.len() + 8;
    let mut trickle = TcpStream::connect(&addr).unwrap();
    write!(
        trickle,
        "POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {total}\r\n\r\n{head}"
    )
    .unwrap();
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let (status, code, _) = error_of(publish(&n.url, &key, tiny.clone(), "second"));
    assert_eq!((status, code.as_str()), (429, "too_many_uploads"));
    let during = valid_inference(&n.url, &tiny_id);
    // one byte a second
    let mut answer = Vec::new();
    trickle
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    for &b in tiny.iter().take(20) {
        if trickle.write_all(&[b]).is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match trickle.read(&mut buf) {
            Ok(k) if k > 0 => {
                answer.extend_from_slice(&buf[..k]);
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(950)),
        }
    }
    let cut = t.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("upload_too_slow"), "{answer}");
    assert!(cut < Duration::from_secs(8), "{cut:?}");
    eprintln!("trickling upload cut after {cut:?}; valid inference meanwhile {during:?}");
    // its slot is free again
    assert_eq!(
        publish(&n.url, &key, tiny.clone(), "after")
            .status()
            .as_u16(),
        201
    );

    // a body announced at 10¹² bytes is refused before it is sent
    let mut big = TcpStream::connect(&addr).unwrap();
    write!(big, "POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000000000\r\n\r\n").unwrap();
    big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let k = big.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..k]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let mut big = TcpStream::connect(&addr).unwrap();
    write!(big, "POST /v1/models/{tiny_id}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000000\r\n\r\n{{").unwrap();
    big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let k = big.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..k]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");

    // an unparseable or unsigned manifest is refused before the model part is read: the answer comes
    // while the client is still holding the model back
    for (manifest, status) in [
        ("not json".to_string(), "400"),
        ("{\"manifest\": {}}".to_string(), "401"),
    ] {
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n{manifest}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n"
        );
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(s, "POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 1073741824\r\n\r\n{head}").unwrap();
        // answered after at most 2 s more of listening for the rest (so that clients that send their
        // whole body before reading see the answer), never after the gigabyte
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let k = s.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..k]);
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
    }
    // the model part before the manifest is refused
    let form = reqwest::blocking::multipart::Form::new()
        .part(
            "model",
            reqwest::blocking::multipart::Part::bytes(tiny.clone()),
        )
        .text(
            "manifest",
            signed_manifest(&key, id_of(&tiny), "x", "1.0.0"),
        );
    let (status, code, _) = error_of(
        http()
            .post(format!("{}/v1/models", n.url))
            .multipart(form)
            .send()
            .unwrap(),
    );
    assert_eq!((status, code.as_str()), (400, "manifest_first"));
    valid_inference(&n.url, &tiny_id);
}

#[test]
fn sigterm_under_load_exits_in_time_and_kill9_loses_no_acknowledged_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let config = "workers = 2\n[limits]\nassumed_ops_per_sec = 1000000000000\n[timeouts]\nshutdown_secs = 3\n";
    let (mut n, key, tiny_id) = start_with_tiny(dir.path(), config);
    let (slow, slow_body) = slow_model();
    let slow_id = id_of(&slow);
    assert_eq!(publish(&n.url, &key, slow, "slow").status().as_u16(), 201);

    // SIGTERM while a long run and a stream of small ones are going
    let url = n.url.clone();
    let long = std::thread::spawn(move || {
        http()
            .post(format!("{url}/v1/models/{slow_id}/infer"))
            .header("content-type", "application/json")
            .body(slow_body)
            .send()
            .map(|r| r.status().as_u16())
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let small: Vec<_> = (0..2)
        .map(|_| {
            let (url, stop) = (n.url.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut ok = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = http()
                        .post(format!("{url}/v1/models/{tiny_id}/infer"))
                        .json(&json!({"inputs": {"x": {"shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}}}))
                        .send();
                    match r {
                        Ok(r) if r.status().as_u16() == 200 => ok += 1,
                        _ => break,
                    }
                }
                ok
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let t = Instant::now();
    let code = n.terminate();
    let took = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    eprintln!("SIGTERM under load: exit {code:?} after {took:?}");
    // exit status 0 means it finished before its own watchdog (3 s after it saw the signal); the bound
    // here leaves room for a busy machine to deliver the signal and reap the process
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(8), "{took:?}");
    let served: i32 = small.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(served > 0);
    // the long run was cancelled (503) or cut (connection closed), never left running
    if let Ok(status) = long.join().unwrap() {
        assert_eq!(status, 503);
    }

    // a restart right after works
    let mut n = NodeProc::start(dir.path(), &[]);
    valid_inference(&n.url, &tiny_id);

    // kill -9 under load: every acknowledged receipt is in the store after a restart
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop, acked) = (n.url.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let c = http();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = c
                        .post(format!("{url}/v1/models/{tiny_id}/infer"))
                        .json(&json!({"inputs": {"x": {"shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}}}))
                        .send();
                    let Ok(r) = r else { break };
                    if r.status().as_u16() != 200 {
                        break;
                    }
                    let Ok(v) = r.json::<Value>() else { break };
                    if let Some(id) = v["request_id"].as_str() {
                        acked.lock().unwrap().push(id.to_string());
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    n.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in load {
        h.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "only {} inferences under load",
        acked.len()
    );
    let n = NodeProc::start(dir.path(), &[]);
    let c = http();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| {
            c.get(format!("{}/v1/receipts/{id}", n.url))
                .send()
                .map(|r| r.status().as_u16() != 200)
                .unwrap_or(true)
        })
        .collect();
    eprintln!(
        "kill -9 under load: {} acknowledged, {} missing after restart",
        acked.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged receipts lost",
        missing.len()
    );
    valid_inference(&n.url, &tiny_id);
}
