//! Quorum inference (k = 3) on a 5-node devnet under faults, each scenario a bounded load run through a
//! coordinator node whose every answer is checked here (certificate and outputs) against `verity run`:
//! two nodes killed with SIGKILL mid-run, the same nodes restarted (they rejoin and sign again), a node
//! that perturbs its outputs (caught: never in a certificate, its signed lie kept as evidence), and a node
//! that stalls (timed out and replaced); then a node serving corrupted chunks while the others replicate a
//! newly registered model (refused, the model stored intact). Counts are printed per scenario.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use verity_chain::cert::{verify_certificate, QuorumCertificate};
use verity_chain::Chain;
use verity_core::{Address, Hash};

use super::devnet::{exclusive, find_process, free_base, wait_for, Running};
use super::root;

/// A node process of the devnet: its command line, so it can be killed and started again.
struct NodeCmd {
    addr: Address,
    url: String,
    args: Vec<String>,
}

/// The node process running on `data_dir`: (pid, its arguments).
fn node_process(data_dir: &Path) -> Option<(u32, Vec<String>)> {
    let want = data_dir.to_str()?.to_string();
    find_process(|args| {
        args.get(1).is_some_and(|a| a == "node")
            && args
                .windows(2)
                .any(|w| w[0] == "--data-dir" && w[1] == want)
    })
}

fn node_pid(data_dir: &Path) -> Option<u32> {
    node_process(data_dir).map(|p| p.0)
}

fn node_cmd(data_dir: &Path, addr: Address, url: String) -> NodeCmd {
    let (_, args) = node_process(data_dir).expect("node process");
    NodeCmd { addr, url, args }
}

fn kill9(data_dir: &Path) {
    let pid = node_pid(data_dir).expect("node to kill");
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    // its command line goes with its memory, before its files (and the store's lock) are closed, and
    // its main thread can be a zombie while other threads still hold them: wait until the process is
    // gone, or a zombie with no other thread left
    let exited = || match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => {
            let zombie = s
                .lines()
                .any(|l| l.starts_with("State:") && (l.contains('Z') || l.contains('X')));
            let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
            zombie && threads <= 1
        }
        Err(_) => true,
    };
    wait_for("the node to die", 20, || {
        node_pid(data_dir).is_none() && exited()
    });
}

fn start(n: &NodeCmd, extra: &[&str], log: &Path) -> Child {
    try_start(n, extra, log).unwrap_or_else(|why| panic!("{why}"))
}

/// Start a node and wait until it is ready; why not (with its log) if it exits or does not come up.
fn try_start(n: &NodeCmd, extra: &[&str], log: &Path) -> Result<Child, String> {
    // what this attempt writes to the log (appended), so a retry does not read an earlier one's error
    let from = std::fs::metadata(log).map_or(0, |m| m.len() as usize);
    let ours = || {
        let all = std::fs::read(log).unwrap_or_default();
        String::from_utf8_lossy(all.get(from..).unwrap_or_default()).into_owned()
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut c = Command::new(&n.args[0])
        .args(&n.args[1..])
        .args(extra)
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("{}/v2/health/ready", n.url);
    let t0 = Instant::now();
    loop {
        if reqwest::blocking::get(&url).is_ok_and(|r| r.status().is_success()) {
            return Ok(c);
        }
        if let Ok(Some(status)) = c.try_wait() {
            return Err(format!(
                "node {} exited ({status}) while starting:\n{}",
                n.url,
                ours()
            ));
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = c.kill();
            return Err(format!(
                "node {} did not come back within 120 s:\n{}",
                n.url,
                ours()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Kill node `i` of the devnet in `dir` with SIGKILL and start it again with `extra` flags, logging to
/// `log`.
fn restart(dir: &Path, i: usize, n: &NodeCmd, extra: &[&str], log: &Path) -> Child {
    kill9(&dir.join(format!("node-{i}")));
    // the kernel may still be releasing the dead process's store lock: a start refused for that alone
    // is tried again, for a bounded time
    let t0 = Instant::now();
    loop {
        match try_start(n, extra, log) {
            Ok(c) => return c,
            Err(why) if why.contains("Database already open") && t0.elapsed().as_secs() < 20 => {
                std::thread::sleep(Duration::from_millis(500))
            }
            Err(why) => panic!("{why}"),
        }
    }
}

/// The native request body for the MLP fixture.
fn mlp_body() -> Value {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("fixtures/mlp.input.json")).unwrap(),
    )
    .unwrap();
    json!({ "inputs": doc })
}

/// What a load run saw.
#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    failed: usize,
    /// Certificates each node signed.
    signed: std::collections::BTreeMap<Address, usize>,
    /// Dissenting receipts each node left in certificates.
    dissent: std::collections::BTreeMap<Address, usize>,
    /// Attempts per outcome ("timed out", "unreachable", ...).
    outcomes: std::collections::BTreeMap<String, usize>,
    errors: Vec<String>,
}

/// `n` requests over `threads` client threads (bounded by `limit`); `during(i)` runs before request i of
/// thread 0. Every success is checked: certificate valid, k = 3, output hash = the canonical one, outputs
/// hash to it.
fn load(
    coordinator: &str,
    n: usize,
    threads: usize,
    limit: Duration,
    expected: Hash,
    timeout_ms: u64,
    mut during: impl FnMut(usize),
) -> Tally {
    let body = mlp_body();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let worker = |first: bool| {
        let next = next.clone();
        let body = body.clone();
        let url = format!("{coordinator}/v1/models/mlp/quorum?k=3&timeout_ms={timeout_ms}");
        move |during: &mut dyn FnMut(usize)| {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap();
            let mut t = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n || start.elapsed() > limit {
                    break;
                }
                if first {
                    during(i);
                }
                let r = http.post(&url).json(&body).send();
                let (status, v) = match r {
                    Ok(r) => (
                        r.status().as_u16(),
                        r.json::<Value>().unwrap_or(Value::Null),
                    ),
                    Err(e) => (0, json!({"error": {"message": e.to_string()}})),
                };
                for a in v["attempts"].as_array().into_iter().flatten() {
                    let o = a["outcome"].as_str().unwrap_or("").to_string();
                    let key = if o.starts_with("unreachable") {
                        "unreachable".to_string()
                    } else {
                        o
                    };
                    *t.outcomes.entry(key).or_default() += 1;
                }
                if status != 200 {
                    t.failed += 1;
                    t.errors
                        .push(format!("{status}: {}", v["error"]["message"]));
                    continue;
                }
                let cert: QuorumCertificate =
                    serde_json::from_value(v["certificate"].clone()).expect("certificate");
                let s = verify_certificate(&cert).expect("the certificate verifies");
                assert_eq!(cert.k, 3);
                assert_eq!(
                    cert.output_hash, expected,
                    "the certified output is the canonical one"
                );
                assert_eq!(
                    verity_node::roles::quorum::outputs_hash(&v["outputs"]).unwrap(),
                    expected,
                    "the returned outputs are the certified ones"
                );
                for a in s.signers {
                    *t.signed.entry(a).or_default() += 1;
                }
                for d in &cert.dissent {
                    *t.dissent.entry(d.receipt.node).or_default() += 1;
                }
                t.ok += 1;
            }
            t
        }
    };
    let mut tallies = Vec::new();
    std::thread::scope(|s| {
        let mut hs = Vec::new();
        for _ in 1..threads {
            let w = worker(false);
            hs.push(s.spawn(move || w(&mut |_| {})));
        }
        let w = worker(true);
        tallies.push(w(&mut during));
        for h in hs {
            tallies.push(h.join().unwrap());
        }
    });
    let mut t = Tally::default();
    for x in tallies {
        t.ok += x.ok;
        t.failed += x.failed;
        t.errors.extend(x.errors);
        for (k, v) in x.signed {
            *t.signed.entry(k).or_default() += v;
        }
        for (k, v) in x.dissent {
            *t.dissent.entry(k).or_default() += v;
        }
        for (k, v) in x.outcomes {
            *t.outcomes.entry(k).or_default() += v;
        }
    }
    t
}

#[test]
fn quorum_of_3_on_5_nodes_survives_crashes_liars_and_stalls() {
    let _one = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_base(7);
    let (mut running, dir, summary) = Running::devnet(tmp.path(), 5, port, 300);
    let nodes: Vec<NodeCmd> = (0..5)
        .map(|i| {
            let n = &summary["nodes"][i];
            node_cmd(
                &dir.join(format!("node-{i}")),
                n["address"].as_str().unwrap().parse().unwrap(),
                n["url"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let o = Command::new(env!("CARGO_BIN_EXE_verity"))
        .args(["run", dir.join("models/mlp.vty").to_str().unwrap()])
        .args(["--input", "fixtures/mlp.input.json"])
        .current_dir(root())
        .output()
        .unwrap();
    let run: Value = serde_json::from_slice(&o.stdout).unwrap();
    let expected: Hash = run["output_hash"].as_str().unwrap().parse().unwrap();
    let coord = nodes[0].url.clone();
    let report = |name: &str, t: &Tally| {
        println!(
            "scenario {name}: {} requests, {} verified, {} failed; attempts {:?}; signed {:?}; dissent {:?}",
            t.ok + t.failed,
            t.ok,
            t.failed,
            t.outcomes,
            t.signed,
            t.dissent
        );
    };

    // 1. Healthy baseline.
    let t = load(
        &coord,
        20,
        2,
        Duration::from_secs(120),
        expected,
        5000,
        |_| {},
    );
    report("healthy", &t);
    assert_eq!((t.ok, t.failed), (20, 0), "{:?}", t.errors);

    // 2. Two nodes killed with SIGKILL during the run: every request still completes and verifies.
    let (d3, d4) = (dir.join("node-3"), dir.join("node-4"));
    let mut killed = false;
    let t = load(
        &coord,
        40,
        2,
        Duration::from_secs(180),
        expected,
        5000,
        |i| {
            // Thread 0 runs this before each of its requests: the first time it is past request 8.
            if i >= 8 && !killed {
                killed = true;
                kill9(&d3);
                kill9(&d4);
            }
        },
    );
    assert!(killed);
    report("kill -9 two nodes", &t);
    assert_eq!((t.ok, t.failed), (40, 0), "{:?}", t.errors);
    assert!(
        t.outcomes.get("unreachable").copied().unwrap_or(0) > 0,
        "the dead nodes were drawn and replaced: {:?}",
        t.outcomes
    );

    // 2b. `verity infer --quorum` given several coordinators fails over: past a dead node, and past a
    // coordinator that answers with a valid certificate and forged outputs, to one that serves.
    let real: Value = reqwest::blocking::Client::new()
        .post(format!("{coord}/v1/models/mlp/quorum?k=3"))
        .json(&mlp_body())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let info: Value = reqwest::blocking::get(format!("{coord}/v1/models/mlp"))
        .unwrap()
        .json()
        .unwrap();
    let mut forged = real.clone();
    forged["inputs"] = info["inputs"].clone();
    assert!(forged["outputs"][0]["data"][0].is_number(), "{real}");
    forged["outputs"][0]["data"][0] = json!(12345.0);
    let liar = super::attacks::slow_server(forged.to_string(), Duration::ZERO);
    let liar = liar.trim_end_matches("/input").to_string();
    let cli_infer = |nodes: &str| {
        Command::new(env!("CARGO_BIN_EXE_verity"))
            .args([
                "infer",
                "mlp",
                "--input",
                "fixtures/mlp.input.json",
                "--quorum",
                "3",
            ])
            .args(["--node", nodes])
            .current_dir(root())
            .output()
            .unwrap()
    };
    let o = cli_infer(&format!("{},{liar},{coord}", nodes[3].url));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("node {}: cannot reach", nodes[3].url))
            && err.contains(&format!("node {liar}: the coordinator's outputs hash to"))
            && err.matches("asking the next node").count() == 2,
        "each node passed over is named with its reason: {err}"
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["certificate"]["output_hash"], json!(expected), "{v}");
    // Every coordinator given dead or lying: exit 1 with one line per node.
    let o = cli_infer(&format!("{},{liar}", nodes[4].url));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("none of the 2 nodes served the request")
            && err.contains(&format!("  {}: cannot reach", nodes[4].url))
            && err.contains(&format!("  {liar}: the coordinator's outputs")),
        "{err}"
    );
    assert!(o.stdout.is_empty(), "nothing unverified is printed");

    // 3. They restart (same keys, data and port) and rejoin: they sign certificates again.
    let logs = tmp.path();
    running
        .extra
        .push(start(&nodes[3], &[], &logs.join("n3.log")));
    running
        .extra
        .push(start(&nodes[4], &[], &logs.join("n4.log")));
    let t = load(
        &coord,
        30,
        2,
        Duration::from_secs(180),
        expected,
        5000,
        |_| {},
    );
    report("restarted nodes rejoin", &t);
    assert_eq!((t.ok, t.failed), (30, 0), "{:?}", t.errors);
    assert!(
        t.signed.contains_key(&nodes[3].addr) || t.signed.contains_key(&nodes[4].addr),
        "a restarted node signs again: {:?}",
        t.signed
    );
    // Their chain loops caught up: the restarted nodes' logs show them watching again.
    let l3 = std::fs::read_to_string(logs.join("n3.log")).unwrap();
    assert!(l3.contains("node is registered"), "{l3}");

    // 4. A lying node (outputs perturbed, lies signed): never in a certificate, its lie kept as evidence.
    let liar = &nodes[2];
    running.extra.push(restart(
        &dir,
        2,
        liar,
        &["--fault", "perturb-output"],
        &logs.join("n2.log"),
    ));
    let t = load(
        &coord,
        30,
        2,
        Duration::from_secs(180),
        expected,
        5000,
        |_| {},
    );
    report("a lying node", &t);
    assert_eq!((t.ok, t.failed), (30, 0), "{:?}", t.errors);
    assert!(
        !t.signed.contains_key(&liar.addr),
        "the liar never signs a certificate: {:?}",
        t.signed
    );
    assert!(
        t.dissent.get(&liar.addr).copied().unwrap_or(0) > 0,
        "the liar was drawn and its signed lie kept: {:?}",
        t.dissent
    );
    // Without widening, a request that draws the liar fails with the evidence.
    let body = mlp_body();
    let mut caught = None;
    for _ in 0..40 {
        let r = reqwest::blocking::Client::new()
            .post(format!("{coord}/v1/models/mlp/quorum?k=3&widen=false"))
            .json(&body)
            .send()
            .unwrap();
        if r.status().as_u16() == 409 {
            caught = Some(r.json::<Value>().unwrap());
            break;
        }
        assert_eq!(r.status().as_u16(), 200);
    }
    let ev = caught.expect("within 40 requests the liar is drawn among the first 3");
    assert_eq!(ev["error"]["code"], "quorum_disagreement", "{ev}");
    let groups = ev["evidence"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{ev}");
    let lie = groups
        .iter()
        .find(|g| g["output_hash"] != json!(expected))
        .expect("the lying group");
    let r: verity_core::SignedReceipt = serde_json::from_value(lie["receipts"][0].clone()).unwrap();
    assert_eq!(
        r.verify().unwrap(),
        liar.addr,
        "the evidence is the liar's own signature"
    );

    // 5. A stalling node (answers after 5 s) is timed out after 1 s and replaced.
    let staller = &nodes[1];
    running.extra.push(restart(
        &dir,
        1,
        staller,
        &["--fault", "stall=5000"],
        &logs.join("n1.log"),
    ));
    let t = load(
        &coord,
        12,
        2,
        Duration::from_secs(180),
        expected,
        1000,
        |_| {},
    );
    report("a stalling node (and the liar)", &t);
    assert_eq!((t.ok, t.failed), (12, 0), "{:?}", t.errors);
    assert!(
        t.outcomes.get("timed out").copied().unwrap_or(0) > 0,
        "the staller was drawn and timed out: {:?}",
        t.outcomes
    );
    assert!(!t.signed.contains_key(&staller.addr), "{:?}", t.signed);

    // 6. A node serving corrupted chunks: a new model is published on node 0 and on it, then registered
    //    on-chain; the other nodes replicate it from both hosts, refuse the corrupt one at its first bad
    //    chunk, and store the exact model.
    let bad = &nodes[4];
    running.extra.push(restart(
        &dir,
        4,
        bad,
        &["--fault", "corrupt-chunks"],
        &logs.join("n4b.log"),
    ));
    let (_, bytes, id) = super::replicate::big_model(tmp.path(), 2_600_000);
    let publisher = verity_core::SecretKey::from_hex(
        "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    )
    .unwrap();
    let manifest = super::node::signed_manifest(&publisher, id, "big", "1.0.0");
    for n in [&nodes[0], bad] {
        let r = super::node::publish_raw(&n.url, manifest.clone(), bytes.clone());
        assert!(r.status().is_success(), "publish: {}", r.status());
    }
    let rpc = format!("http://127.0.0.1:{port}");
    let dep = verity_chain::Deployment::load(&dir.join("contracts.json")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let chain = rt
        .block_on(verity_chain::EvmChain::connect(&rpc, dep, Some(&publisher)))
        .unwrap();
    // Both hosts announce it before it is registered, so every replica sees two peers.
    wait_for("both hosts to announce the model", 60, || {
        let h = rt.block_on(chain.hosts_of(id)).unwrap_or_default();
        h.contains(&nodes[0].addr) && h.contains(&bad.addr)
    });
    // The publisher registers it with `verity model register`; nobody else can, and the registry
    // lists what was registered.
    let contracts = dir.join("contracts.json");
    let model_cli = |key: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_verity"))
            .arg("model")
            .args(args)
            .args(["--chain", &rpc, "--contracts", contracts.to_str().unwrap()])
            .env("VERITY_KEY", key)
            .current_dir(root())
            .output()
            .unwrap()
    };
    let stranger = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
    let publisher_hex = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    let register = |key: &str, model: &str, price: &str| {
        model_cli(
            key,
            &["register", model, "--price", price, "--node", &nodes[0].url],
        )
    };
    let refused = |o: &std::process::Output, why: &str| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(why), "expected '{why}' in: {err}");
    };
    refused(
        &register(stranger, "big@1.0.0", "1wei"),
        "only its publisher registers it",
    );
    refused(
        &register(publisher_hex, "nosuch@1.0.0", "1wei"),
        "does not host model nosuch@1.0.0: publish it there first",
    );
    refused(
        &register(publisher_hex, "big@1.0.0", "1.5"),
        "the smallest amount is 1 wei",
    );
    refused(
        &register(publisher_hex, "big@1.0.0", "ten"),
        "is not an amount",
    );
    let ls = |key: &str| {
        let o = model_cli(key, &["ls", "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    let listed = ls(stranger);
    assert!(
        !listed["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["model_id"] == json!(id)),
        "nothing was registered by the refused attempts: {listed}"
    );
    let o = register(publisher_hex, "big@1.0.0", "1wei");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains(&format!("big@1.0.0  {id}  price 1 wei")) && out.contains("registered: tx"),
        "{out}"
    );
    let o = model_cli(stranger, &["show", "big", "--json"]);
    assert_eq!(o.status.code(), Some(2), "show takes no --json");
    let o = model_cli(stranger, &["show", "big"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["model_id"], json!(id), "{shown}");
    assert_eq!(shown["owner"], json!(publisher.address()), "{shown}");
    assert_eq!(shown["price_wei"], "1", "{shown}");
    let signed: verity_core::SignedManifest = serde_json::from_str(&manifest).unwrap();
    assert_eq!(
        shown["manifest_hash"],
        json!(signed.manifest.digest()),
        "the registration binds the owner's signed manifest: {shown}"
    );
    // Registering again changes only the price.
    let o = register(publisher_hex, "big@1.0.0", "0.000000000000000002eth");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("already registered; price changed from 1 wei"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let listed = ls(stranger);
    let mine = listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_id"] == json!(id))
        .cloned()
        .expect("listed");
    assert_eq!(mine["price_wei"], "2", "{listed}");
    assert_eq!(mine["name"], "big", "{listed}");
    wait_for("nodes 1-3 to replicate and announce the model", 120, || {
        let h = rt.block_on(chain.hosts_of(id)).unwrap_or_default();
        nodes[1..4].iter().all(|n| h.contains(&n.addr))
    });
    for n in &nodes[1..4] {
        let got = reqwest::blocking::get(format!("{}/v1/models/{id}/download", n.url))
            .unwrap()
            .bytes()
            .unwrap();
        assert!(
            got.as_ref() == bytes.as_slice(),
            "node {} stores the exact model",
            n.url
        );
    }
    let mut refusals = 0;
    for f in ["n1.log", "n2.log", "n3.log"] {
        let log = std::fs::read_to_string(logs.join(f)).unwrap_or_default();
        refusals += log
            .lines()
            .filter(|l| l.contains("refusing peer") && l.contains(&bad.url))
            .count();
    }
    println!(
        "scenario a node serving corrupted chunks: 3 replicas of a {}-byte model stored intact, {refusals} refusals of the corrupt peer",
        bytes.len()
    );
    assert!(refusals >= 1, "the corrupt peer was detected and refused");
}
