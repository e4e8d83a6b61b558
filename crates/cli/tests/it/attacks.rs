//! The settlement attacks of `docs/spec/economics.md`, played against a devnet with real nodes (three
//! `verity node` processes on anvil, 1 s blocks):
//! - **griefing**: a requester who makes honest nodes refuse (an input hash the input does not have, a
//!   model registered at price 0 that nobody hosts) gets its fee back and nothing more; no node loses
//!   stake;
//! - **steering**: a node that tops up its stake after a request is placed does not change that request's
//!   assignment (stakes are read at the request's block);
//! - **hijacking**: a receipt a node gives over HTTP for someone else's pending request (input of the
//!   attacker's choosing) is refused by the hub, and the request finalizes with its own input.
//!
//! Each asserts that the attacker's balance does not grow and that honest nodes keep their stake.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use alloy::primitives::U256;
use alloy::providers::Provider;
use verity_chain::evm::EvmChain;
use verity_chain::{Assignment, Chain, Deployment, HubEventKind, Mode, Status};
use verity_core::{keccak256, Address, Hash, SecretKey};

use crate::devnet::{exclusive, find_process, free_base, Running};
use crate::root;

struct Net {
    rt: tokio::runtime::Runtime,
    client: EvmChain,
    nodes: Vec<Address>,
    urls: Vec<String>,
    dir: std::path::PathBuf,
    rpc: String,
    dep: Deployment,
}

impl Net {
    fn balance(&self, who: Address) -> U256 {
        let p = self.client.provider();
        self.rt
            .block_on(async { p.get_balance(verity_chain::to_evm(&who)).await })
            .unwrap()
    }

    fn stakes(&self) -> Vec<U256> {
        self.nodes
            .iter()
            .map(|a| {
                let i = self
                    .rt
                    .block_on(self.client.node_info(*a))
                    .unwrap()
                    .unwrap();
                i.stake.parse().unwrap()
            })
            .collect()
    }

    /// What transaction `tx` cost its sender in gas (wei).
    fn gas_cost(&self, tx: &Hash) -> U256 {
        let p = self.client.provider();
        let r = self
            .rt
            .block_on(async { p.get_transaction_receipt(verity_chain::to_b256(tx)).await })
            .unwrap()
            .unwrap();
        U256::from(r.gas_used) * U256::from(r.effective_gas_price)
    }

    /// Wait (up to `secs`) until request `id` is settled; its final state.
    fn settled(&self, id: u64, secs: u64) -> verity_chain::RequestInfo {
        let start = Instant::now();
        loop {
            let r = self.rt.block_on(self.client.request(id)).unwrap().unwrap();
            if r.status != Status::Pending {
                return r;
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "request {id} still pending after {secs} s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The hub events of request `id` since block `from`.
    fn events(&self, id: u64, from: u64) -> Vec<HubEventKind> {
        let head = self.rt.block_on(self.client.head()).unwrap().number;
        self.rt
            .block_on(self.client.hub_events(from, head))
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .filter(|k| match k {
                HubEventKind::Declined { id: r, .. }
                | HubEventKind::ReceiptAccepted { id: r, .. }
                | HubEventKind::Finalized { id: r, .. }
                | HubEventKind::Refunded { id: r } => *r == id,
                _ => false,
            })
            .collect()
    }

    /// The receipt a node's HTTP API gives for `body`.
    fn http_receipt(&self, url: &str, body: &serde_json::Value) -> verity_core::SignedReceipt {
        let r: serde_json::Value = reqwest::blocking::Client::new()
            .post(format!("{url}/v1/models/mlp/infer"))
            .json(body)
            .send()
            .unwrap()
            .json()
            .unwrap();
        serde_json::from_value(r["receipt"].clone()).unwrap_or_else(|e| panic!("{e}: {r}"))
    }

    /// Request `id`'s assignment once its seed block is mined.
    fn assignment(&self, id: u64) -> Vec<Address> {
        let start = Instant::now();
        loop {
            match self.rt.block_on(self.client.assignment(id)).unwrap() {
                Assignment::Nodes(v) => return v,
                a => assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "no assignment for {id}: {a:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A connection with node `i`'s own key.
    fn as_node(&self, i: usize) -> EvmChain {
        let key =
            verity_node::key::read_key_file(&self.dir.join(format!("node-{i}/node.key"))).unwrap();
        self.rt
            .block_on(EvmChain::connect(&self.rpc, self.dep.clone(), Some(&key)))
            .unwrap()
    }
}

/// The MLP fixture input as a node's inference body, in a `data:` URI.
fn data_uri() -> String {
    use base64::Engine;
    let text = std::fs::read_to_string(root().join("fixtures/mlp.input.json")).unwrap();
    format!(
        "data:application/json;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(format!("{{\"inputs\": {text}}}"))
    )
}

/// Serve `body` once per connection at `http://127.0.0.1:<port>/input` (and at any other path), each
/// answer after `delay`; the thread ends with the test process.
/// Read one HTTP request to its end (headers and a `content-length` body), so that closing the socket
/// after answering does not reset the connection under the client (unread bytes make the close an RST).
fn read_request(s: &mut std::net::TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut need: Option<usize> = None;
    loop {
        if let Some(n) = need {
            if got.len() >= n {
                return;
            }
        } else if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let body = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            need = Some(end + 4 + body);
            continue;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

pub(crate) fn slow_server(body: String, delay: Duration) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/input", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                read_request(&mut s);
                std::thread::sleep(delay);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    url
}

#[test]
fn griefing_steering_and_hijacking_gain_the_attacker_nothing() {
    let _one = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_base(7);
    let (mut running, dir, summary) = Running::devnet(tmp.path(), 3, port, 240);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rpc = summary["rpc"].as_str().unwrap().to_string();
    let dep = Deployment::load(&dir.join("contracts.json")).unwrap();
    let attacker = SecretKey::from_hex(summary["client_key"].as_str().unwrap()).unwrap();
    let client = rt
        .block_on(EvmChain::connect(&rpc, dep.clone(), Some(&attacker)))
        .unwrap();
    let nodes: Vec<Address> = summary["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["address"].as_str().unwrap().parse().unwrap())
        .collect();
    let urls = summary["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["url"].as_str().unwrap().to_string())
        .collect();
    let net = Net {
        rt,
        client,
        nodes,
        urls,
        dir,
        rpc,
        dep,
    };
    let mlp: Hash = summary["models"][0]["model_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let price = net.rt.block_on(net.client.price_of(&mlp)).unwrap();
    let me = attacker.address();
    let stakes = net.stakes();

    // 1. Griefing with an input hash the input does not have: the drawn node declines, the fee comes
    //    back at once, nobody is slashed; the attacker is down its gas.
    let before = net.balance(me);
    let wrong = keccak256(b"not the hash of this input");
    let placed = net
        .rt
        .block_on(
            net.client
                .request_inference(&mlp, &wrong, &data_uri(), Mode::Signed, 1, price),
        )
        .unwrap();
    let r = net.settled(placed.id, 60);
    assert_eq!(r.status, Status::Refunded, "{r:?}");
    let ev = net.events(placed.id, placed.block);
    assert!(
        ev.iter().any(
            |e| matches!(e, HubEventKind::Declined { reason, .. } if reason == "input_mismatch")
        ),
        "the drawn node declined for the input: {ev:?}"
    );
    // nothing left to claim: a timeout after the fact is refused
    let hub = verity_chain::bindings::InferenceHub::new(
        verity_chain::to_evm(&net.dep.hub),
        net.client.provider().clone(),
    );
    let late = net
        .rt
        .block_on(async { hub.timeout(U256::from(placed.id)).call().await });
    assert!(late.is_err(), "a timeout of a refunded request is refused");
    assert_eq!(
        net.balance(me),
        before - net.gas_cost(&placed.tx),
        "the attacker got its fee back and is down exactly its gas"
    );
    assert_eq!(net.stakes(), stakes, "no node lost stake");

    // 2. Griefing with a model registered at price 0 that nobody hosts: declined, refunded, no slash.
    let ghost = keccak256(b"a model nobody has");
    net.rt
        .block_on(
            net.client
                .register_model(&ghost, "ghost", "1.0.0", &Hash::ZERO, U256::ZERO),
        )
        .unwrap();
    let before = net.balance(me);
    let placed = net
        .rt
        .block_on(net.client.request_inference(
            &ghost,
            &Hash::ZERO,
            &data_uri(),
            Mode::Signed,
            1,
            U256::ZERO,
        ))
        .unwrap();
    let r = net.settled(placed.id, 90);
    assert_eq!(r.status, Status::Refunded, "{r:?}");
    let ev = net.events(placed.id, placed.block);
    assert!(
        ev.iter()
            .any(|e| matches!(e, HubEventKind::Declined { .. })),
        "the drawn node declined the unhosted model: {ev:?}"
    );
    assert_eq!(
        net.balance(me),
        before - net.gas_cost(&placed.tx),
        "gas only"
    );
    assert_eq!(net.stakes(), stakes, "no node lost stake");

    // 3. Steering: once a request's seed is public, a node not drawn adds far more stake than all the
    //    others hold; the request's assignment does not move (stakes at the request's block), while its
    //    current stake did change.
    let registry = verity_chain::bindings::NodeRegistry::new(
        verity_chain::to_evm(&net.dep.nodes),
        net.client.provider().clone(),
    );
    let placed = net
        .rt
        .block_on(net.client.request_inference(
            &mlp,
            &Hash::ZERO,
            &slow_server(
                format!(
                    "{{\"inputs\": {}}}",
                    std::fs::read_to_string(root().join("fixtures/mlp.input.json")).unwrap()
                ),
                Duration::from_secs(4),
            ),
            Mode::Signed,
            1,
            price,
        ))
        .unwrap();
    let drawn = net.assignment(placed.id);
    let outsider = (0..3).find(|&i| !drawn.contains(&net.nodes[i])).unwrap();
    let o = net.nodes[outsider];
    let as_outsider = net.as_node(outsider);
    net.rt
        .block_on(as_outsider.add_stake(verity_chain::ether(5000)))
        .unwrap();
    let now: U256 = net
        .rt
        .block_on(async { registry.stakeOf(verity_chain::to_evm(&o)).call().await })
        .unwrap();
    assert_eq!(now, stakes[outsider] + verity_chain::ether(5000));
    assert_eq!(
        net.assignment(placed.id),
        drawn,
        "a stake added after the request does not move its assignment"
    );

    // 4. Hijacking, on that pending request (its input is served slowly, so the drawn node is still
    //    fetching it): the attacker gets a receipt for the request's ID with an input of its own from a
    //    node's HTTP API and submits it. The hub refuses it (the receipt is signed for the court), and
    //    the request finalizes with its own input.
    let honest_body: serde_json::Value = serde_json::from_str(&format!(
        "{{\"inputs\": {}}}",
        std::fs::read_to_string(root().join("fixtures/mlp.input.json")).unwrap()
    ))
    .unwrap();
    let mut body = honest_body.clone();
    body["inputs"]["input"]["data"][0] = serde_json::json!(0.0);
    body["request_id"] =
        serde_json::json!(verity_node::roles::chain::request_hash(placed.id).to_string());
    let drawn_url = &net.urls[net.nodes.iter().position(|a| *a == drawn[0]).unwrap()];
    let forged = net.http_receipt(drawn_url, &body);
    assert_eq!(forged.receipt.node, drawn[0]);
    let before = net.balance(me);
    let refused = net.rt.block_on(net.client.submit(placed.id, &forged));
    match refused {
        Err(verity_chain::ChainError::Reverted(m)) => {
            assert!(m.contains("signature is not the node's"), "{m}")
        }
        other => panic!("the hub took a hijacked receipt: {other:?}"),
    }
    let r = net.settled(placed.id, 60);
    assert_eq!(r.status, Status::Finalized);
    assert_eq!(
        r.input_hash,
        net.http_receipt(drawn_url, &honest_body).receipt.input_hash,
        "finalized with the request's own input"
    );
    assert_ne!(r.input_hash, forged.receipt.input_hash);
    assert!(net.balance(me) <= before, "the hijacker gained nothing");
    let mut now = stakes.clone();
    now[outsider] += verity_chain::ether(5000);
    assert_eq!(net.stakes(), now, "no node lost stake");

    // The devnet names its watcher, and stops on SIGTERM (a process manager's stop) with every child.
    assert!(
        summary["watcher"]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("0x") && a.len() == 42),
        "devnet.json names the watcher: {summary}"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &running.devnet.id().to_string()])
        .status()
        .unwrap();
    let start = Instant::now();
    while running.devnet.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the devnet stops on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let d = net.dir.to_string_lossy().to_string();
    let left = find_process(|args| args.iter().any(|a| a.contains(&d)));
    assert!(left.is_none(), "a devnet child outlived it: {left:?}");
}
