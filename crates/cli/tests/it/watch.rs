//! Optimistic mode with real processes on anvil: a node started with `--fault corrupt-op=<Op>` commits a
//! wrong trace and a `verity watch` process catches it, for every op kind of the fixtures — the watcher
//! re-executes, challenges, plays the game through the contracts, wins, and finalizes the honest result;
//! the liar loses its whole stake. An honest node beats a lying watcher; a node that disappears after committing
//! loses by timeout.

use std::path::Path;
use std::time::{Duration, Instant};

use alloy::primitives::U256;
use verity_chain::dispute::Stage;
use verity_chain::evm::EvmChain;
use verity_core::{Address, Hash};
use verity_engine::commit::tensors_hash;
use verity_engine::dispute::Side;
use verity_engine::{Model, Trace};

use crate::node::NodeProc;
use crate::onestep::Anvil;
// keys 0–2 of dispute::KEYS: client and model owner, node, watcher
use crate::dispute::KEYS;
use crate::root;

const MOVE_BLOCKS: u64 = 8;
const CHALLENGE_BLOCKS: u64 = 10;
/// The stake the node registers with (and is restaked to before each lie: a lost game takes all of it).
const STAKE: u128 = 100 * 10u128.pow(18);

struct Net {
    anvil: Anvil,
    contracts: std::path::PathBuf,
    client: EvmChain,
    /// The node's account (key 1), for restaking it.
    node: EvmChain,
    rt: tokio::runtime::Runtime,
}

impl Net {
    fn mine(&self, n: u64) {
        crate::dispute::mine(&self.rt, &self.client, n)
    }

    fn stake(&self, who: Address) -> u128 {
        crate::dispute::stake(&self.rt, &self.client, who)
    }

    /// Bring the node's stake back to [`STAKE`] (once it is registered).
    fn restake(&self) {
        let who = self.node.sender().unwrap();
        let have = self.stake(who);
        if have < STAKE {
            self.rt
                .block_on(self.node.add_stake(U256::from(STAKE - have)))
                .unwrap();
        }
    }

    /// Request an optimistic inference of fixture `name` (input given inline); the seed block and one
    /// more are mined (a call sees a block's hash only from the next block on).
    fn request(&self, name: &str, m: &Model, trace: &Trace) -> u64 {
        use base64::Engine;
        let id = verity_engine::vty::model_id(m);
        let input = tensors_hash(&trace.tensors[..m.inputs.len()]);
        let text =
            std::fs::read_to_string(root().join(format!("fixtures/{name}.input.json"))).unwrap();
        let body = format!("{{\"inputs\": {text}}}");
        let uri = format!(
            "data:application/json;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(body)
        );
        let placed = self
            .rt
            .block_on(self.client.request_optimistic(
                &id,
                &input,
                &uri,
                verity_chain::ether(1) / U256::from(100),
            ))
            .unwrap();
        self.mine(2);
        placed.id
    }

    /// Wait until request `id`'s pending claim is `owner`'s with `trace` and no game is open.
    fn wait_claim(&self, id: u64, owner: Address, trace: &Hash, what: &str) {
        let start = Instant::now();
        loop {
            let c = self.rt.block_on(self.client.claim(id)).unwrap();
            let r = self
                .rt
                .block_on(self.client.optimistic_request(id))
                .unwrap();
            if c.owner == owner && c.trace_root == *trace && r.open_games == 0 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{what}: claim of request {id} is {c:?} ({} games open), waiting for {owner}'s",
                r.open_games
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Close request `id`'s window and wait until its claim's owner has finalized it.
    fn wait_finalized(&self, id: u64, what: &str) {
        self.mine(CHALLENGE_BLOCKS + 1);
        let start = Instant::now();
        while self
            .rt
            .block_on(self.client.optimistic_request(id))
            .unwrap()
            .status
            != 3
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what}: request {id} finalized by its claim's owner"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every `Slashed` event of `who` from block `from` on: (amount taken, block).
    fn slashes(&self, who: Address, from: u64) -> Vec<(u128, u64)> {
        let p = self.client.provider();
        let reg = verity_chain::bindings::NodeRegistry::new(
            verity_chain::to_evm(&self.client.deployment().nodes),
            p.clone(),
        );
        let logs = self
            .rt
            .block_on(
                reg.Slashed_filter()
                    .topic1(verity_chain::to_evm(&who))
                    .from_block(from)
                    .query(),
            )
            .unwrap();
        logs.into_iter()
            .map(|(e, l)| (e.amount.to::<u128>(), l.block_number.unwrap_or(0)))
            .collect()
    }

    fn block(&self) -> u64 {
        use alloy::providers::Provider;
        self.rt
            .block_on(self.client.provider().get_block_number())
            .unwrap()
    }

    fn games(&self, id: u64) -> Vec<verity_chain::dispute::Game> {
        let ids = self.rt.block_on(self.client.games_of(id)).unwrap();
        ids.iter()
            .map(|g| self.rt.block_on(self.client.game(*g)).unwrap())
            .collect()
    }
}

fn write_config(dir: &Path, net: &Net) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "[chain]\nrpc = \"{}\"\ncontracts = \"{}\"\nstake = \"100000000000000000000\"\npoll_ms = 100\n",
            net.anvil.url,
            net.contracts.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("node.key"), KEYS[1].trim_start_matches("0x")).unwrap();
}

fn watcher(dir: &Path, net: &Net, extra: &[&str]) -> NodeProc {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("node.key"), KEYS[2].trim_start_matches("0x")).unwrap();
    let d = dir.to_str().unwrap();
    let c = net.contracts.to_str().unwrap();
    let mut args = vec![
        "watch",
        "--chain",
        &net.anvil.url,
        "--contracts",
        c,
        "--data-dir",
        d,
        "--poll-ms",
        "100",
    ];
    args.extend_from_slice(extra);
    NodeProc::spawn(&args)
}

#[test]
fn a_watcher_catches_a_lying_node_for_every_op_kind() {
    let _lock = crate::devnet::exclusive();
    let (anvil, rt, dep, keys) = crate::dispute::deployed(CHALLENGE_BLOCKS, MOVE_BLOCKS);
    let dir = tempfile::tempdir().unwrap();
    let contracts = dir.path().join("contracts.json");
    dep.save(&contracts).unwrap();
    let client = rt
        .block_on(EvmChain::connect(&anvil.url, dep.clone(), Some(&keys[0])))
        .unwrap();
    let node = rt
        .block_on(EvmChain::connect(&anvil.url, dep.clone(), Some(&keys[1])))
        .unwrap();
    let net = Net {
        anvil,
        contracts,
        client,
        node,
        rt,
    };
    let node_addr = keys[1].address();
    let watch_addr = keys[2].address();

    // The fixtures: compiled (into `dir`), registered on-chain; for each op kind the first node of that
    // kind.
    let (fixtures, targets) = crate::dispute::registered_fixtures(&net.rt, &net.client, dir.path());

    // The node (the only one registered, so always assigned) holds every fixture; the watcher fetches
    // them from it on demand.
    let nd = dir.path().join("node");
    write_config(&nd, &net);
    let publisher = dir.path().join("publisher.key");
    std::fs::write(&publisher, KEYS[0].trim_start_matches("0x")).unwrap();
    {
        let node = NodeProc::start(&nd, &[]);
        for (name, _, _) in &fixtures {
            let vty = dir.path().join(format!("{name}.vty"));
            let o = std::process::Command::new(env!("CARGO_BIN_EXE_verity"))
                .args(["model", "publish", vty.to_str().unwrap(), "--name", name])
                .args(["--version", "1.0.0", "--node", &node.url])
                .env("VERITY_KEY_FILE", &publisher)
                .env_remove("VERITY_KEY")
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
    }
    let wd = dir.path().join("watcher");
    let _watcher = watcher(&wd, &net, &[]);

    println!(
        "{:<10} {:<12} {:>5} {:>6} {:>7}",
        "op", "fixture", "node", "moves", "secs"
    );
    for (op, (f, k)) in &targets {
        let (name, m, honest) = &fixtures[*f];
        // restaked before the node starts: the test and the node never send from its key at once
        net.restake();
        let mut node = NodeProc::start(&nd, &["--fault", &format!("corrupt-op={op}")]);
        let start = Instant::now();
        let truth = Side::new(m, honest).unwrap();
        let id = net.request(name, m, honest);
        net.wait_claim(id, watch_addr, &truth.trace_root(), op);
        let games = net.games(id);
        assert_eq!(games.len(), 1, "{op}: one challenge");
        let g = &games[0];
        assert_eq!(g.stage, Stage::Done);
        assert_eq!(g.challenger, watch_addr);
        assert_eq!(
            g.leaf as usize,
            m.inputs.len() + k,
            "{op}: the game ended on the corrupted node"
        );
        assert_eq!(
            net.stake(node_addr),
            0,
            "{op}: the liar lost its whole stake"
        );
        net.wait_finalized(id, op);
        let claim = net.rt.block_on(net.client.claim(id)).unwrap();
        assert_eq!(
            claim.output_hash,
            truth.output_hash(),
            "{op}: honest output"
        );
        println!(
            "{op:<10} {name:<12} {k:>5} {:>6} {:>7.1}",
            g.moves,
            start.elapsed().as_secs_f64()
        );
        node.terminate();
    }

    // An honest node against a lying watcher: the watcher cannot prove its element, misses its last
    // move, and the node claims the timeout; its result finalizes and it keeps its stake.
    let (name, m, honest) = fixtures.iter().find(|f| f.0 == "mlp").unwrap();
    drop(_watcher);
    let liar_wd = dir.path().join("liar-watcher");
    let _liar_watcher = watcher(&liar_wd, &net, &["--fault", "corrupt-op=EinSum"]);
    net.restake();
    let _node = NodeProc::start(&nd, &[]);
    let truth = Side::new(m, honest).unwrap();
    let stake_before = net.stake(node_addr);
    let id = net.request(name, m, honest);
    let start = Instant::now();
    // the game reaches the challenger's last step, which it cannot make
    loop {
        let gs = net.games(id);
        if gs.first().is_some_and(|g| g.stage == Stage::Step) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the false challenge reaches the last step: {gs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    net.mine(MOVE_BLOCKS + 1);
    net.wait_claim(id, node_addr, &truth.trace_root(), "false challenge");
    assert_eq!(net.games(id)[0].stage, Stage::Done);
    assert_eq!(
        net.stake(node_addr),
        stake_before,
        "the honest node keeps its stake"
    );
    net.wait_finalized(id, "false challenge");
    drop(_liar_watcher);
    drop(_node);

    // A lying node that disappears after committing loses the game by timeout.
    let (name, m, honest) = fixtures.iter().find(|f| f.0 == "cnn").unwrap();
    net.restake();
    let mut node = NodeProc::start(&nd, &["--fault", "corrupt-op=Conv2d"]);
    let truth = Side::new(m, honest).unwrap();
    let stake_before = net.stake(node_addr);
    let from = net.block();
    let id = net.request(name, m, honest);
    let start = Instant::now();
    while net.rt.block_on(net.client.claim(id)).unwrap().owner != node_addr {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the node commits"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    node.kill9();
    let _watcher = watcher(&wd, &net, &[]);
    let start = Instant::now();
    while net.games(id).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the watcher challenges"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    net.mine(MOVE_BLOCKS + 1);
    net.wait_claim(id, watch_addr, &truth.trace_root(), "vanished node");
    // The game's resolution took the whole stake at once (read from the registry's events, so that the
    // check is about that transaction alone).
    assert_eq!(
        net.slashes(node_addr, from),
        vec![(
            stake_before,
            net.slashes(node_addr, from).first().map_or(0, |s| s.1)
        )],
        "the vanished liar loses its whole stake ({stake_before} wei) in one slash"
    );
    let after = net.stake(node_addr);
    if after != 0 {
        eprintln!("note: the vanished liar's stake is {after} wei again after its slash");
    }
    net.wait_finalized(id, "vanished node");

    // Off-chain receipts (signed for the ReceiptCourt over HTTP) handed to the watcher with
    // `verity dispute`: an honest one is re-executed and agreed with; the liar's is disputed at the
    // court, the watcher wins the game on the corrupted node, and the liar loses its whole stake.
    let (_, m, honest) = fixtures.iter().find(|f| f.0 == "mlp").unwrap();
    let truth = Side::new(m, honest).unwrap();
    let dispute = |node: &NodeProc, what: &str| -> serde_json::Value {
        let body = format!(
            "{{\"inputs\": {}}}",
            std::fs::read_to_string(root().join("fixtures/mlp.input.json")).unwrap()
        );
        let r: serde_json::Value = reqwest::blocking::Client::new()
            .post(format!("{}/v1/models/mlp/infer", node.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let file = dir.path().join(format!("{what}.receipt.json"));
        std::fs::write(&file, serde_json::to_vec(&r).unwrap()).unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_verity"))
            .args(["dispute", file.to_str().unwrap()])
            .args([
                "--input",
                "fixtures/mlp.input.json",
                "--node",
                &_watcher.url,
            ])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    drop(node);
    net.restake();
    let node = NodeProc::start(&nd, &[]);
    let agreed = dispute(&node, "honest");
    assert_eq!(agreed["state"], "agreed", "{agreed}");
    assert_eq!(
        agreed["trace_root"].as_str().unwrap(),
        truth.trace_root().to_string(),
        "an honest HTTP receipt's trace root is the game's"
    );
    drop(node);
    let liar = NodeProc::start(&nd, &["--fault", "corrupt-op=EinSum"]);
    let stake_before = net.stake(node_addr);
    let d = dispute(&liar, "liar");
    assert_eq!(d["state"], "disputed", "{d}");
    assert_eq!(
        d["executed"]["trace_root"].as_str().unwrap(),
        truth.trace_root().to_string()
    );
    let id = d["dispute"].as_u64().unwrap();
    let start = Instant::now();
    while net.games(id).first().is_none_or(|g| g.stage != Stage::Done) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the off-chain dispute is played out: {:?}",
            net.games(id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let g = &net.games(id)[0];
    assert_eq!(g.challenger, watch_addr);
    assert_eq!(
        g.leaf as usize,
        m.inputs.len()
            + m.nodes
                .iter()
                .position(|n| n.op.name() == "EinSum")
                .unwrap(),
        "the game ended on the corrupted node"
    );
    assert!(stake_before > 0);
    assert_eq!(net.stake(node_addr), 0, "the liar lost its whole stake");
    drop(liar);
}
