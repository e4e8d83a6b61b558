//! `verity devnet --demo` end to end on a real anvil (installed by `scripts/setup-chain`): deployment,
//! three node processes that register and stake, the demo models published and registered, a quorum
//! request answered by the nodes' receipts, the result re-executed and verified, fees paid. A second run
//! resumes the same chain and node state and must not submit anything twice.

use super::root;
use std::process::Command;

/// A block of `n` free loopback ports, different on every call in this process (tests run in parallel).
pub fn free_base(n: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let start = (std::process::id() % 600) as u16 * 20;
    loop {
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(k < 1000, "no free ports");
        let b = start.wrapping_add(k.wrapping_mul(23)) % 12000 + 20000;
        if (b..b + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return b;
        }
    }
}

/// Devnet tests run one at a time: each starts anvil and several node processes, and two at once on a
/// small machine only slow each other down.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn devnet(dir: &std::path::Path, port: u16, extra: &[&str]) -> String {
    let anvil = root().join(".tools/node_modules/.bin/anvil");
    assert!(anvil.exists(), "anvil is missing: run scripts/setup-chain");
    let mut args = vec!["devnet", "--dir", dir.to_str().unwrap(), "--port"];
    let p = port.to_string();
    args.push(&p);
    args.extend_from_slice(&["--demo", "--once", "--anvil", anvil.to_str().unwrap()]);
    args.extend_from_slice(extra);
    // the streamed chat through the openai SDK needs a Python with it (scripts/setup-python's)
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-python",
        python.display()
    );
    let o = Command::new(env!("CARGO_BIN_EXE_verity"))
        .args(&args)
        .env("VERITY_DEMO_PYTHON", &python)
        .current_dir(root())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "devnet failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // the demo's story and timings, shown with --nocapture
    eprintln!("{out}");
    out
}

#[test]
fn devnet_demo_runs_end_to_end_and_resumes() {
    let _one = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dn");
    let port = free_base(7);
    let llm = root().join(".models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        llm.exists(),
        "{} is missing: run scripts/setup-models",
        llm.display()
    );
    let llm = format!("smollm2={}", llm.display());
    let out = devnet(
        &dir,
        port,
        &["--fresh", "--llm", &llm, "--llm-context", "128"],
    );
    // the language model: a chat answer with its receipt verified, then the same from a quorum of 3
    for want in [
        "10. chat",
        "12 times 7",
        // streamed through the openai SDK, every chunk checked, a proxy's edit refused, the answer verified
        "10b. openai  the openai SDK streams a chat",
        "each checked against the running hash signed by",
        "altered   a proxy's edit of chunk",
        "chat-stream.json --model",
        "re-execution gives the same",
        "11. quorum  ?quorum=3: 3 nodes drawn from the registry generate the same",
        ", the answer above",
        "chat-quorum.json --chain … → valid quorum certificate: 3 nodes",
        "language-model demo done",
        // sentence embeddings from node 0, their receipts re-executed with the encoder directory
        "12. embed",
        "2 vectors of 32 dimensions",
        "fixtures/embed-mini → valid: 2 embeddings signed by",
        "embeddings demo done",
    ] {
        assert!(out.contains(want), "missing '{want}' in:\n{out}");
    }
    for want in [
        "InferenceHub",
        "node 2",
        "model      mlp@1.0.0",
        "2. request  #1",
        "final    output hash",
        "5. verify",
        "7. quorum   off-chain: 3 nodes drawn from the registry agree",
        "valid quorum certificate: 3 nodes",
        "replicated mlp on all 3 nodes",
    ] {
        assert!(out.contains(want), "missing '{want}' in:\n{out}");
    }
    assert!(
        out.contains("→ valid: model"),
        "the receipt must verify:\n{out}"
    );
    assert!(
        out.contains("model owner 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 +0.001000 ETH"),
        "{out}"
    );
    // optimistic mode: the lying node is drawn, caught by the watcher, slashed; the honest result is final
    for want in [
        "8. liar",
        "the liar says output",
        "watcher  the watcher re-executed, found another output, challenged",
        "won by the watcher against the liar",
        "(Mul)",
        "claim of the watcher",
        "slashed  the liar's stake 50.000000 ETH → 0.000000 ETH",
    ] {
        assert!(out.contains(want), "missing '{want}' in:\n{out}");
    }
    // signed mode: the restaked liar's wrong receipt finalizes a hub request; the watcher's audit
    // disputes it at the ReceiptCourt, wins the game, and the liar loses its whole stake again
    let signed = &out[out
        .find("part 2b")
        .expect("the signed-mode dispute demo runs")..];
    for want in [
        "restake  the liar stakes 50.000000 ETH again",
        "(signed, fee 0.001000 ETH) drawn: the liar",
        "its receipt alone finalized request",
        "court    the watcher re-executed the receipt, disputed it at the ReceiptCourt",
        "won by the watcher against the liar",
        "(Mul)",
        "slashed  the liar's stake 50.000000 ETH → 0.000000 ETH",
        "dispute demos done",
    ] {
        assert!(signed.contains(want), "missing '{want}' in:\n{out}");
    }
    // The watcher audited the honest quorum's receipts of request 1 and agreed (an honest receipt's
    // trace root is the game's), and disputed the liar's.
    let wlog = std::fs::read_to_string(dir.join("watcher/node.log")).unwrap();
    let audits = |says: &str| -> Vec<&str> {
        wlog.lines()
            .filter(|l| l.contains(&format!("audit: {says}")))
            .collect()
    };
    assert_eq!(
        audits("re-executed: output")
            .iter()
            .filter(|l| l.contains("request=1 "))
            .count(),
        2,
        "both receipts of request 1 audited and agreed:\n{wlog}"
    );
    assert_eq!(audits("the receipt says output").len(), 1, "{wlog}");
    // zk mode: a node proves the inference and the proof verifies offline against the model
    for want in [
        "part 3: zk mode",
        "1. prove    node",
        "2. verify   verity verify",
        "→ valid, checked offline",
        "zk demo done",
    ] {
        assert!(out.contains(want), "missing '{want}' in:\n{out}");
    }
    let receipts = out.lines().filter(|l| l.starts_with("3. receipt")).count();
    assert_eq!(receipts, 2, "k = 2 receipts accepted:\n{out}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("devnet.json")).unwrap()).unwrap();
    assert_eq!(summary["nodes"].as_array().unwrap().len(), 3);

    // Second run: same chain (anvil state), same contracts, same node keys and jobs.
    let out2 = devnet(&dir, port, &[]);
    assert!(out2.contains("resumed"), "{out2}");
    // request IDs continue after the first run's (its signed-mode requests included)
    let last_signed = out
        .lines()
        .filter(|l| l.contains("(signed, fee"))
        .filter_map(|l| {
            l.split('#')
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .expect("the first run placed signed requests");
    assert!(
        out2.contains(&format!("2. request  #{} ", last_signed + 1)),
        "request IDs continue after #{last_signed}:\n{out2}"
    );
    assert!(out2.contains("→ valid: model"), "{out2}");
    assert!(
        out2.contains("won by the watcher against the liar"),
        "a new liar is caught again by the resumed watcher:\n{out2}"
    );
    let summary2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("devnet.json")).unwrap()).unwrap();
    assert_eq!(
        summary["contracts"], summary2["contracts"],
        "contracts reused"
    );
    assert_eq!(summary["nodes"], summary2["nodes"], "node keys reused");
    for i in 0..3 {
        let log = std::fs::read_to_string(dir.join(format!("node-{i}/node.log"))).unwrap();
        assert!(
            log.contains("node is registered"),
            "node {i} did not re-register:\n{log}"
        );
        assert!(
            !log.lines().any(|l| l.contains("receipt submitted")
                && l.contains("request\u{1b}[0m\u{1b}[2m=\u{1b}[0m1 ")
                || l.contains("receipt submitted") && l.contains("request=1 ")),
            "node {i} submitted request 1 again after the restart:\n{log}"
        );
    }
}

/// A running `verity devnet` (no demo), stopped with SIGINT (then killed) when dropped, with any anvil
/// the test restarted itself.
pub struct Running {
    pub devnet: std::process::Child,
    pub extra: Vec<std::process::Child>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.devnet.id().to_string()])
            .status();
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(30) {
            if let Ok(Some(_)) = self.devnet.try_wait() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let _ = self.devnet.kill();
        let _ = self.devnet.wait();
        for c in &mut self.extra {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Running {
    /// Start `verity devnet --fresh` with `nodes` nodes in `tmp/dn` on ports from `port` (no demo), its
    /// output in `tmp/devnet.out`, and wait (up to `secs`) until it is ready; returns it with its
    /// directory and `devnet.json`.
    pub fn devnet(
        tmp: &std::path::Path,
        nodes: usize,
        port: u16,
        secs: u64,
    ) -> (Running, std::path::PathBuf, serde_json::Value) {
        let dir = tmp.join("dn");
        let anvil = root().join(".tools/node_modules/.bin/anvil");
        assert!(anvil.exists(), "anvil is missing: run scripts/setup-chain");
        let log = std::fs::File::create(tmp.join("devnet.out")).unwrap();
        let devnet = Command::new(env!("CARGO_BIN_EXE_verity"))
            .args(["devnet", "--fresh", "--nodes", &nodes.to_string()])
            .args(["--dir", dir.to_str().unwrap(), "--port", &port.to_string()])
            .args(["--anvil", anvil.to_str().unwrap()])
            .current_dir(root())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let running = Running {
            devnet,
            extra: vec![],
        };
        wait_for("the devnet to come up", secs, || {
            dir.join("devnet.json").exists()
        });
        let summary =
            serde_json::from_str(&std::fs::read_to_string(dir.join("devnet.json")).unwrap())
                .unwrap();
        (running, dir, summary)
    }
}

fn rpc_call(url: &str, method: &str, params: serde_json::Value) -> serde_json::Value {
    let r: serde_json::Value = reqwest::blocking::Client::new()
        .post(url)
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(r.get("error").is_none(), "{method}: {r}");
    r["result"].clone()
}

/// A live (not zombie) process whose command line satisfies `matches`: (pid, its arguments).
pub fn find_process(matches: impl Fn(&[String]) -> bool) -> Option<(u32, Vec<String>)> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if !matches(&args) {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if !stat.contains(") Z ") {
            return Some((pid, args));
        }
    }
    None
}

/// The anvil process listening on `port`: (pid, its command line).
fn anvil_process(port: u16) -> (u32, Vec<String>) {
    find_process(|args| {
        args.first().is_some_and(|a| a.ends_with("anvil"))
            && args
                .windows(2)
                .any(|w| w[0] == "--port" && w[1] == port.to_string())
    })
    .unwrap_or_else(|| panic!("no anvil on port {port}"))
}

pub fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !ok() {
        assert!(start.elapsed().as_secs() < secs, "{what} within {secs} s");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn verity_request_gets_verified_results_through_an_rpc_outage_and_a_reorg() {
    let _one = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_base(7);
    let rpc = format!("http://127.0.0.1:{port}");
    let (mut running, dir, summary) = Running::devnet(tmp.path(), 3, port, 240);
    let key = summary["client_key"].as_str().unwrap().to_string();
    let contracts = dir.join("contracts.json");
    let node0 = summary["nodes"][0]["url"].as_str().unwrap().to_string();
    let request = |extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_verity"))
            .arg("request")
            .args(extra)
            .args(["--chain", &rpc, "--contracts", contracts.to_str().unwrap()])
            .args(["--node", &node0, "--wait", "90"])
            .env("VERITY_KEY", &key)
            .current_dir(root())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let expected = |model: &str| -> serde_json::Value {
        let vty = dir.join(format!("models/{model}.vty"));
        let input = format!("fixtures/{model}.input.json");
        let o = Command::new(env!("CARGO_BIN_EXE_verity"))
            .args(["run", vty.to_str().unwrap(), "--input", &input])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(o.status.success());
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["outputs"].as_object().unwrap().values().next().unwrap()["data"].clone()
    };
    let check = |r: &(Option<i32>, String, String), model: &str, receipts: usize| -> u64 {
        assert_eq!(r.0, Some(0), "verity request failed:\n{}\n{}", r.1, r.2);
        let v: serde_json::Value = serde_json::from_str(&r.1).unwrap();
        assert_eq!(v["verified"], true, "{v}");
        assert_eq!(v["outputs"][0]["data"], expected(model), "{model} output");
        assert_eq!(v["receipts"].as_array().unwrap().len(), receipts, "{v}");
        v["request"]["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no request id in {v}"))
    };

    // Signed and quorum requests from the CLI; bad requests refused with the contract's reason.
    let signed = request(&["mlp@1.0.0", "--input", "fixtures/mlp.input.json"]);
    let id1 = check(&signed, "mlp", 1);
    let quorum = request(&["cnn", "--input", "fixtures/cnn.input.json", "--quorum", "2"]);
    let id2 = check(&quorum, "cnn", 2);
    assert_eq!(id2, id1 + 1);
    // Hijacking: a stranger asks a node's HTTP API for a receipt naming a pending on-chain request ID,
    // with an input of its own choosing. The node signs it for the ReceiptCourt's domain (where it can
    // only be disputed), never the hub's, so it cannot finalize that request; and the coordinator
    // refuses to gather certificates for on-chain requests.
    let deployment: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&contracts).unwrap()).unwrap();
    let court = deployment["court"]
        .as_str()
        .expect("the deployment names its court");
    let hub = deployment["hub"].as_str().unwrap();
    let tensors: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("fixtures/mlp.input.json")).unwrap(),
    )
    .unwrap();
    let mut body = serde_json::json!({ "inputs": tensors });
    body["request_id"] = serde_json::json!(format!("0x{:064x}", id2 + 1));
    let client = reqwest::blocking::Client::new();
    let r: serde_json::Value = client
        .post(format!("{node0}/v1/models/mlp/infer"))
        .json(&body)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let domain = &r["receipt"]["domain"];
    assert_eq!(
        domain["verifying_contract"].as_str().map(str::to_lowercase),
        Some(court.to_lowercase()),
        "HTTP receipts are signed for the court: {r}"
    );
    assert_ne!(court.to_lowercase(), hub.to_lowercase());
    let refused = client
        .post(format!(
            "{node0}/v1/models/mlp/quorum?k=2&onchain={}",
            id2 + 1
        ))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    let e: serde_json::Value = refused.json().unwrap();
    assert_eq!(e["error"]["code"], "onchain_not_offered", "{e}");
    // An optimistic request: one drawn node commits, the devnet's watcher re-executes and agrees, the
    // result is final after the window; the CLI computes the output itself and checks the final hash.
    let opt = request(&["mlp", "--input", "fixtures/mlp.input.json", "--optimistic"]);
    assert_eq!(
        opt.0,
        Some(0),
        "optimistic request failed:\n{}\n{}",
        opt.1,
        opt.2
    );
    let v: serde_json::Value = serde_json::from_str(&opt.1).unwrap();
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(
        v["outputs"][0]["data"],
        expected("mlp"),
        "optimistic output"
    );
    assert_eq!(
        v["games"].as_array().unwrap().len(),
        0,
        "nobody disputed: {v}"
    );
    let owner = v["claim_owner"].as_str().unwrap().to_lowercase();
    // the CLI says which node was drawn; undisputed, its claim is the final one
    assert_eq!(v["drawn"].as_str().unwrap().to_lowercase(), owner, "{v}");
    assert!(opt.2.contains("drawn    node "), "{}", opt.2);
    assert!(
        summary["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["address"].as_str().unwrap().to_lowercase() == owner),
        "a devnet node's claim: {v}"
    );
    let watched: serde_json::Value =
        reqwest::blocking::get(format!("http://127.0.0.1:{}/v1/optimistic", port + 4))
            .unwrap()
            .json()
            .unwrap();
    let oid = v["request"].as_u64().unwrap();
    let job = watched["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"].as_u64() == Some(oid))
        .unwrap_or_else(|| panic!("the watcher saw request {oid}: {watched}"));
    assert!(
        job["log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("re-executed: agrees")),
        "the watcher re-executed the claim and agreed: {job}"
    );
    let unknown = request(&["no-such-model", "--input", "fixtures/mlp.input.json"]);
    assert_eq!(unknown.0, Some(1));
    assert!(
        unknown.2.contains("no model 'no-such-model' is registered"),
        "{}",
        unknown.2
    );
    let cheap = request(&["mlp", "--input", "fixtures/mlp.input.json", "--fee", "1"]);
    assert_eq!(cheap.0, Some(1));
    assert!(cheap.2.contains("the fee is too low"), "{}", cheap.2);
    let shape = request(&["mlp", "--input", "fixtures/cnn.input.json"]);
    assert_eq!(shape.0, Some(1));
    assert!(shape.2.contains("must have shape"), "{}", shape.2);

    // The RPC endpoint goes away (anvil stops, saving its state) and comes back on the same port.
    let (pid, args) = anvil_process(port);
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    wait_for("anvil to stop", 30, || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
    let down = request(&["mlp", "--input", "fixtures/mlp.input.json"]);
    assert_eq!(down.0, Some(1), "a request without a chain fails");
    assert!(
        down.2.contains("RPC"),
        "clear error without a chain: {}",
        down.2
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let restarted = Command::new(&args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    running.extra.push(restarted);
    wait_for("anvil to restart", 60, || {
        reqwest::blocking::Client::new()
            .post(&rpc)
            .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}))
            .send()
            .is_ok()
    });
    let after = request(&["mlp", "--input", "fixtures/mlp.input.json", "--quorum", "2"]);
    let id3 = check(&after, "mlp", 2);
    assert!(id3 > id2, "request IDs continue after the restart");
    let logs = || -> String {
        (0..3)
            .map(|i| std::fs::read_to_string(dir.join(format!("node-{i}/node.log"))).unwrap())
            .collect()
    };
    let l = logs();
    assert!(
        l.contains("chain unreachable"),
        "nodes noticed the outage:\n{l}"
    );
    assert!(
        l.contains("chain connection restored"),
        "nodes reconnected:\n{l}"
    );

    // A reorganisation: a finalized request is undone, and its ID is reused by another request.
    let snap = rpc_call(&rpc, "evm_snapshot", serde_json::json!([]));
    let gone = request(&["mlp", "--input", "fixtures/mlp.input.json"]);
    let id4 = check(&gone, "mlp", 1);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        rpc_call(&rpc, "evm_revert", serde_json::json!([snap])),
        true
    );
    let again = request(&["cnn", "--input", "fixtures/cnn.input.json", "--quorum", "2"]);
    let id5 = check(&again, "cnn", 2);
    assert_eq!(
        id5, id4,
        "the replaced request's ID is reused on the new branch"
    );
    let l = logs();
    assert!(
        l.contains("chain reorganisation"),
        "nodes saw the reorg:\n{l}"
    );
}
