//! `verity devnet --demo` end to end on a real anvil (installed by `scripts/setup-chain`): deployment,
//! three node processes that register and stake, the demo models published and registered, a quorum
//! request answered by the nodes' receipts, the result re-executed and verified, fees paid. A second run
//! resumes the same chain and node state and must not submit anything twice.

use super::root;
use std::process::Command;

fn free_base(n: u16) -> u16 {
    let start = 30000 + (std::process::id() % 2000) as u16 * 10;
    (0..400)
        .map(|i| start + i * 13)
        .find(|&b| (b..b + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()))
        .expect("free ports")
}

fn devnet(dir: &std::path::Path, port: u16, extra: &[&str]) -> String {
    let anvil = root().join(".tools/node_modules/.bin/anvil");
    assert!(anvil.exists(), "anvil is missing: run scripts/setup-chain");
    let mut args = vec!["devnet", "--dir", dir.to_str().unwrap(), "--port"];
    let p = port.to_string();
    args.push(&p);
    args.extend_from_slice(&["--demo", "--once", "--anvil", anvil.to_str().unwrap()]);
    args.extend_from_slice(extra);
    let o = Command::new(env!("CARGO_BIN_EXE_verity"))
        .args(&args)
        .current_dir(root())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "devnet failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn devnet_demo_runs_end_to_end_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dn");
    let port = free_base(5);
    let out = devnet(&dir, port, &["--fresh"]);
    for want in [
        "InferenceHub",
        "node 2",
        "model      mlp@1.0.0",
        "2. request  #1",
        "final    output hash",
        "5. verify",
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
    let receipts = out.lines().filter(|l| l.starts_with("3. receipt")).count();
    assert_eq!(receipts, 2, "k = 2 receipts accepted:\n{out}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("devnet.json")).unwrap()).unwrap();
    assert_eq!(summary["nodes"].as_array().unwrap().len(), 3);

    // Second run: same chain (anvil state), same contracts, same node keys and jobs.
    let out2 = devnet(&dir, port, &[]);
    assert!(out2.contains("resumed"), "{out2}");
    assert!(
        out2.contains("2. request  #2"),
        "request IDs continue:\n{out2}"
    );
    assert!(out2.contains("→ valid: model"), "{out2}");
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
