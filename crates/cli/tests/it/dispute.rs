//! Optimistic mode on a real anvil, both sides of every dispute played from real traces through the
//! contracts: a node whose trace is wrong at one element of one op is caught and slashed for every op kind
//! of the fixtures; an honest node survives a false challenge; a missed move loses; a second challenger
//! is refunded when the first wins. Rounds, gas per move and time per dispute are printed.

use std::collections::BTreeMap;
use std::time::Instant;

use alloy::primitives::U256;
use alloy::providers::Provider;
use verity_chain::dispute::Stage;
use verity_chain::evm::{deploy, DeployParams, EvmChain};
use verity_chain::Chain;
use verity_core::{Hash, SecretKey};
use verity_engine::commit::tensors_hash;
use verity_engine::dispute::Side;
use verity_engine::{Executor, Mode, Model, Trace};

use crate::manifest;
use crate::onestep::{traced, Anvil};

/// anvil's development keys 0–3: client and model owner, node, two challengers.
pub const KEYS: [&str; 4] = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
];

const MOVE_BLOCKS: u64 = 6;
const CHALLENGE_BLOCKS: u64 = 12;

struct Net {
    anvil: Anvil,
    client: EvmChain,
    node: EvmChain,
    challengers: Vec<EvmChain>,
    rt: tokio::runtime::Runtime,
}

/// Mine `n` blocks on anvil.
pub fn mine(rt: &tokio::runtime::Runtime, chain: &EvmChain, n: u64) {
    rt.block_on(
        chain
            .provider()
            .raw_request::<_, serde_json::Value>("anvil_mine".into(), (U256::from(n),)),
    )
    .unwrap();
}

/// A registered node's stake (wei).
pub fn stake(rt: &tokio::runtime::Runtime, chain: &EvmChain, who: verity_core::Address) -> u128 {
    let info = rt.block_on(chain.node_info(who)).unwrap().unwrap();
    info.stake.parse().unwrap()
}

/// A fresh anvil with the contracts deployed (optimistic windows of `challenge_blocks` and
/// `move_blocks`), a runtime to drive it, the deployment, and [`KEYS`] as keys.
pub fn deployed(
    challenge_blocks: u64,
    move_blocks: u64,
) -> (
    Anvil,
    tokio::runtime::Runtime,
    verity_chain::Deployment,
    Vec<SecretKey>,
) {
    let anvil = Anvil::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys: Vec<SecretKey> = KEYS
        .iter()
        .map(|k| SecretKey::from_hex(k).unwrap())
        .collect();
    let params = DeployParams {
        challenge_blocks,
        move_blocks,
        ..DeployParams::default()
    };
    let dep = rt.block_on(deploy(&anvil.url, &keys[0], &params)).unwrap();
    (anvil, rt, dep, keys)
}

/// A fixture compiled into a directory (`<dir>/<name>.vty`), its model and the trace of its input.
pub type Fixture = (String, Model, Trace);

/// `x` (`width` elements, scale 12) followed by `nodes` additions `y_j = y_{j−1} + x`.
fn chain_model(nodes: usize, width: u32) -> Model {
    use verity_engine::ir::*;
    let mut m = Model::one_node(
        vec![Input {
            name: "x".into(),
            shape: vec![width],
            scale: 12,
            kind: InputKind::Fixed,
        }],
        vec![],
        Op::Add,
        vec![0, 0],
        vec![width],
        12,
    );
    for j in 1..nodes {
        m.nodes.push(Node {
            name: format!("n{j}"),
            op: Op::Add,
            inputs: vec![j as ValueId, 0],
            shape: vec![width],
            scale: 12,
        });
    }
    m.outputs[0].value = nodes as ValueId;
    m
}

/// The fixtures compiled into `dir` and registered on-chain by `client`, and for each op kind the first
/// node of that kind (fixture index, node index).
pub fn registered_fixtures(
    rt: &tokio::runtime::Runtime,
    client: &EvmChain,
    dir: &std::path::Path,
) -> (Vec<Fixture>, BTreeMap<&'static str, (usize, usize)>) {
    let mut fixtures: Vec<Fixture> = Vec::new();
    for (name, flags, _) in manifest() {
        let (m, t) = traced(dir, &name, &flags);
        let id = verity_engine::vty::model_id(&m);
        rt.block_on(client.register_model(&id, &name, "1.0.0", &Hash::ZERO, U256::from(1000)))
            .unwrap();
        fixtures.push((name, m, t));
    }
    let mut targets = BTreeMap::new();
    for (f, (_, m, _)) in fixtures.iter().enumerate() {
        for (k, n) in m.nodes.iter().enumerate() {
            targets.entry(n.op.name()).or_insert((f, k));
        }
    }
    (fixtures, targets)
}

impl Net {
    fn mine(&self, n: u64) {
        mine(&self.rt, &self.client, n)
    }

    fn stake(&self, who: verity_core::Address) -> u128 {
        stake(&self.rt, &self.client, who)
    }

    /// Bring the node's stake back to 100 ETH (a lost game takes all of it).
    fn restake(&self) {
        let who = self.node.sender().unwrap();
        let have = self.stake(who);
        let want = 100 * 10u128.pow(18);
        if have >= want {
            return;
        }
        let reg = verity_chain::bindings::NodeRegistry::new(
            verity_chain::to_evm(&self.node.deployment().nodes),
            self.node.provider().clone(),
        );
        self.rt
            .block_on(self.node.send("restaking", || {
                reg.addStake()
                    .value(U256::from(want - have))
                    .into_transaction_request()
            }))
            .unwrap();
    }

    /// Request an optimistic inference of `m` on `trace`'s inputs (the node restaked first); the seed block
    /// is mined.
    fn request(&self, m: &Model, trace: &Trace) -> u64 {
        self.restake();
        let id = verity_engine::vty::model_id(m);
        let input = tensors_hash(&trace.tensors[..m.inputs.len()]);
        let placed = self
            .rt
            .block_on(self.client.request_optimistic(
                &id,
                &input,
                "data:,",
                verity_chain::ether(1) / U256::from(100),
            ))
            .unwrap();
        self.mine(1);
        placed.id
    }

    /// The node commits `side`'s claim for request `id`.
    fn commit(&self, id: u64, side: &Side<'_>) {
        self.rt
            .block_on(
                self.node
                    .commit(id, &side.output_hash(), &side.trace_root()),
            )
            .unwrap();
    }

    /// Challenger `c` disputes request `id` with `side`'s claim; the game ID.
    fn challenge(&self, id: u64, c: usize, side: &Side<'_>) -> u64 {
        self.rt
            .block_on(self.challengers[c].challenge(id, &side.output_hash(), &side.trace_root()))
            .unwrap()
            .0
    }

    /// Play game `g` to its end: the defender's side and the challenger's side move in turn. Returns the
    /// moves made (name, gas) and whether the challenger could not make its last move.
    fn play(
        &self,
        g: u64,
        defender: &Side<'_>,
        challenger: &Side<'_>,
        ch: &EvmChain,
    ) -> (Vec<(&'static str, u64)>, bool) {
        let mut moves = Vec::new();
        for _ in 0..200 {
            let game = self.rt.block_on(self.node.game(g)).unwrap();
            if game.stage == Stage::Done {
                return (moves, false);
            }
            let (who, side, is_def) = if game.stage.defender_moves() {
                (&self.node, defender, true)
            } else {
                (ch, challenger, false)
            };
            match self.rt.block_on(who.play_move(g, side, is_def)) {
                Ok(Some(m)) => moves.push((m.name, m.gas)),
                Ok(None) => {
                    eprintln!(
                        "game {g}: no move for the {} at {:?} after {moves:?}",
                        if is_def { "defender" } else { "challenger" },
                        game.stage
                    );
                    return (moves, true);
                }
                Err(e) if !is_def => {
                    eprintln!(
                        "game {g}: the challenger's move at {:?} was refused: {e}",
                        game.stage
                    );
                    // the contract refused the challenger's proof: it has nothing true to show
                    assert!(
                        e.to_string().contains("nothing to prove")
                            || e.to_string().contains("reverted"),
                        "{e}"
                    );
                    return (moves, true);
                }
                Err(e) => panic!("defender move failed: {e}"),
            }
        }
        panic!("game {g} did not end");
    }
}

fn setup() -> Net {
    let (anvil, rt, dep, keys) = deployed(CHALLENGE_BLOCKS, MOVE_BLOCKS);
    let connect = |k: &SecretKey| {
        rt.block_on(EvmChain::connect(&anvil.url, dep.clone(), Some(k)))
            .unwrap()
    };
    let client = connect(&keys[0]);
    let node = connect(&keys[1]);
    let challengers = vec![connect(&keys[2]), connect(&keys[3])];
    rt.block_on(node.register_node("http://127.0.0.1:1", verity_chain::ether(100)))
        .unwrap();
    Net {
        anvil,
        client,
        node,
        challengers,
        rt,
    }
}

#[test]
fn optimistic_disputes_on_anvil() {
    let _lock = crate::devnet::exclusive();
    let net = setup();
    let dir = tempfile::tempdir().unwrap();
    let node_addr = net.node.sender().unwrap();
    let ch_addr = net.challengers[0].sender().unwrap();
    // The fixtures, registered; for each op kind the first node of that kind.
    let (mut fixtures, targets) = registered_fixtures(&net.rt, &net.client, dir.path());
    let mut cases: Vec<(String, usize, usize)> = targets
        .iter()
        .map(|(op, (f, k))| (op.to_string(), *f, *k))
        .collect();
    // Beyond the fixtures: chains of one-element tensors whose trace has one leaf more than a power of
    // two (the deepest trace tree for its size) and exactly a power of two, and a chain of nine-element
    // tensors (two words); the lie is in the last node, the rightmost leaf.
    for (label, nodes, width) in [("chain-17", 16, 1), ("chain-16", 15, 1), ("wide-9", 8, 9)] {
        let m = chain_model(nodes, width);
        let x: Vec<i32> = (0..width as i32).map(|i| 3 + i).collect();
        let (_, t) = Executor::new(&m, Mode::default())
            .run_trace(vec![x])
            .unwrap();
        let id = verity_engine::vty::model_id(&m);
        net.rt
            .block_on(
                net.client
                    .register_model(&id, label, "1.0.0", &Hash::ZERO, U256::from(1000)),
            )
            .unwrap();
        fixtures.push((label.to_string(), m, t));
        cases.push((label.to_string(), fixtures.len() - 1, nodes - 1));
    }
    let mut gas: BTreeMap<&'static str, u64> = BTreeMap::new();
    println!(
        "{:<10} {:<12} {:>5} {:>4} {:>7} {:>6} {:>9} {:>7}",
        "op", "fixture", "node", "txs", "rounds", "bound", "step gas", "secs"
    );
    for (op, f, k) in &cases {
        let (name, m, honest) = &fixtures[*f];
        let start = Instant::now();
        let inputs = honest.tensors[..m.inputs.len()].to_vec();
        let len = honest.tensors[m.inputs.len() + k].len();
        let (_, lie) = Executor::new(m, Mode::default())
            .run_trace_tampered(inputs, Some((*k, len / 2)))
            .unwrap();
        let liar = Side::new(m, &lie).unwrap();
        let truth = Side::new(m, honest).unwrap();
        assert_ne!(liar.trace_root(), truth.trace_root());
        let id = net.request(m, honest);
        let stake_before = net.stake(node_addr);
        net.commit(id, &liar);
        let g = net.challenge(id, 0, &truth);
        let (moves, stuck) = net.play(g, &liar, &truth, &net.challengers[0]);
        assert!(!stuck, "{op}: the honest challenger always has a move");
        let game = net.rt.block_on(net.node.game(g)).unwrap();
        assert_eq!(game.stage, Stage::Done);
        // the liar lost: slashed, and the honest claim is now the pending result
        let claim = net.rt.block_on(net.node.claim(id)).unwrap();
        assert_eq!(
            claim.owner, ch_addr,
            "{op}: the challenger's claim replaced the lie"
        );
        assert_eq!(claim.trace_root, truth.trace_root());
        assert_eq!(
            net.stake(node_addr),
            0,
            "{op}: the liar lost its whole stake ({stake_before} wei)"
        );
        assert_eq!(
            game.leaf as usize,
            m.inputs.len() + k,
            "{op}: the dispute found the tampered node"
        );
        net.mine(CHALLENGE_BLOCKS + 1);
        net.rt.block_on(net.client.finalize_optimistic(id)).unwrap();
        let r = net.rt.block_on(net.client.optimistic_request(id)).unwrap();
        assert_eq!(r.status, 3, "finalized");
        // moves: reveal + (split, choose) per trace level + open + (split, choose) per word level + word
        // + step. The honest challenger never descends into padding, so every game takes exactly one
        // choice per level of the trace tree (inputs + nodes leaves) and of the disputed tensor's word
        // tree (⌈elements / 8⌉ leaves), and the step.
        let log2 = |n: usize| usize::BITS - (n.max(1) - 1).leading_zeros();
        let bound = log2(m.inputs.len() + m.nodes.len()) + log2(len.div_ceil(8)) + 1;
        let rounds = moves.iter().filter(|(n, _)| *n == "choose").count() as u32 + 1;
        assert_eq!(rounds, bound, "{op}: rounds");
        for (n, g) in &moves {
            let e = gas.entry(n).or_default();
            *e = (*e).max(*g);
        }
        let step_gas = moves
            .iter()
            .find(|(n, _)| *n == "step")
            .map(|m| m.1)
            .unwrap_or(0);
        println!(
            "{op:<10} {name:<12} {k:>5} {:>4} {rounds:>7} {bound:>6} {step_gas:>9} {:>7.1}",
            moves.len() + 2,
            start.elapsed().as_secs_f64()
        );
    }
    println!("most gas per move: {gas:?}");

    // An honest node survives a false challenge: the challenger cannot prove anything and times out.
    let (_, m, honest) = &fixtures.iter().find(|f| f.0 == "cnn").unwrap();
    let truth = Side::new(m, honest).unwrap();
    let inputs = honest.tensors[..m.inputs.len()].to_vec();
    let (_, lie) = Executor::new(m, Mode::default())
        .run_trace_tampered(inputs, Some((3, 5)))
        .unwrap();
    let liar = Side::new(m, &lie).unwrap();
    let id = net.request(m, honest);
    net.commit(id, &truth);
    let g = net.challenge(id, 0, &liar);
    let stake_before = net.stake(node_addr);
    let (_, stuck) = net.play(g, &truth, &liar, &net.challengers[0]);
    assert!(
        stuck,
        "a false challenger reaches the last step and cannot prove its element"
    );
    net.mine(MOVE_BLOCKS + 1);
    net.rt.block_on(net.client.timeout_game(g)).unwrap();
    assert_eq!(
        net.rt.block_on(net.node.claim(id)).unwrap().owner,
        node_addr
    );
    assert_eq!(
        net.stake(node_addr),
        stake_before,
        "the honest node keeps its stake"
    );
    net.mine(CHALLENGE_BLOCKS + 1);
    net.rt.block_on(net.client.finalize_optimistic(id)).unwrap();
    assert_eq!(
        net.rt
            .block_on(net.client.optimistic_request(id))
            .unwrap()
            .status,
        3
    );

    // A defender that misses its first move loses; a second challenger is refunded and its game closed.
    let id = net.request(m, honest);
    net.commit(id, &liar);
    let g1 = net.challenge(id, 0, &truth);
    let g2 = net.challenge(id, 1, &truth);
    // ending a game before its deadline is refused; so is challenging with the pending claim itself,
    // and finalizing while games are open
    assert!(net.rt.block_on(net.client.timeout_game(g1)).is_err());
    assert!(net
        .rt
        .block_on(net.challengers[0].challenge(id, &liar.output_hash(), &liar.trace_root()))
        .is_err());
    assert!(
        net.rt.block_on(net.client.finalize_optimistic(id)).is_err(),
        "games are open"
    );
    net.mine(MOVE_BLOCKS + 1);
    net.rt.block_on(net.client.timeout_game(g1)).unwrap();
    assert_eq!(net.rt.block_on(net.node.claim(id)).unwrap().owner, ch_addr);
    assert_eq!(
        net.rt.block_on(net.node.game(g2)).unwrap().stage,
        Stage::Done,
        "the other game is closed"
    );
    assert!(net.rt.block_on(net.client.timeout_game(g2)).is_err());
    // the replaced claim can itself be challenged in its new window (here it is honest: nobody does)
    net.mine(CHALLENGE_BLOCKS + 1);
    net.rt.block_on(net.client.finalize_optimistic(id)).unwrap();

    deferred_trace_receipts(&net, m, honest, &truth);
    drop(net.anvil);
}

/// Receipts as nodes sign them while serving, with the trace deferred (trace root zero), disputed at the
/// ReceiptCourt: the node's reveal commits its trace root. A liar cannot escape by revealing the honest
/// trace (it does not lead to the output it signed) and loses its whole stake on the corrupted node; an
/// honest node's receipt cannot be disputed with its own output, and a false challenger loses.
fn deferred_trace_receipts(net: &Net, m: &Model, honest: &Trace, truth: &Side<'_>) {
    let node_addr = net.node.sender().unwrap();
    let court = net.node.deployment().court.expect("a ReceiptCourt");
    let domain = verity_core::receipt::receipt_domain(net.node.chain_id(), court);
    let key = SecretKey::from_hex(KEYS[1]).unwrap();
    let input = &honest.tensors[..m.inputs.len()];
    let signed = |output: Hash| {
        verity_core::Receipt {
            request_id: verity_core::keccak256(b"served over HTTP"),
            model_id: verity_engine::vty::model_id(m),
            input_hash: tensors_hash(input),
            output_hash: output,
            trace_root: Hash::ZERO,
            node: node_addr,
            timestamp: 1_800_000_000,
        }
        .sign(domain.clone(), &key)
    };
    let ch = &net.challengers[0];
    let dispute = |r: &verity_core::SignedReceipt, side: &Side<'_>| {
        net.rt.block_on(ch.dispute_receipt(
            r,
            false,
            &side.output_hash(),
            &side.trace_root(),
            input,
        ))
    };

    // A liar whose lie reaches the output: one element of the node computing the first output.
    let k = m.outputs[0].value as usize - m.first_node_value();
    let (_, lie) = Executor::new(m, Mode::default())
        .run_trace_tampered(input.to_vec(), Some((k, 0)))
        .unwrap();
    let liar = &Side::new(m, &lie).unwrap();
    assert_ne!(liar.output_hash(), truth.output_hash());

    // The liar's receipt.
    net.restake();
    let lie = signed(liar.output_hash());
    let (d, g, _) = dispute(&lie, truth).expect("a different output opens a game");
    assert_eq!(
        net.rt.block_on(net.node.claim(d)).unwrap().trace_root,
        Hash::ZERO
    );
    let escape = net.rt.block_on(net.node.play_move(g, truth, true));
    assert!(
        escape
            .as_ref()
            .is_err_and(|e| e.to_string().contains("bad move: outputs")),
        "the honest trace does not lead to the signed lie: {escape:?}"
    );
    assert_eq!(
        net.rt.block_on(net.node.claim(d)).unwrap().trace_root,
        Hash::ZERO,
        "a refused reveal commits nothing"
    );
    net.rt.block_on(net.node.play_move(g, liar, true)).unwrap();
    assert_eq!(
        net.rt.block_on(net.node.claim(d)).unwrap().trace_root,
        liar.trace_root(),
        "the reveal committed the liar's own trace"
    );
    let (_, stuck) = net.play(g, liar, truth, ch);
    assert!(!stuck, "the honest challenger always has a move");
    let game = net.rt.block_on(net.node.game(g)).unwrap();
    assert_eq!(
        game.leaf as usize,
        m.inputs.len() + k,
        "the game ends on the corrupted node"
    );
    assert_eq!(net.stake(node_addr), 0, "the liar lost its whole stake");

    // An honest receipt.
    net.restake();
    let stake_before = net.stake(node_addr);
    let good = signed(truth.output_hash());
    let same = dispute(&good, liar);
    assert!(same.is_ok(), "a different output may dispute: {same:?}");
    let (d, g, _) = same.unwrap();
    let refused = dispute(&good, truth);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("repeats the pending claim")),
        "the receipt's own output names no dispute: {refused:?}"
    );
    let (_, stuck) = net.play(g, truth, liar, ch);
    assert!(stuck, "a false challenger cannot prove its element");
    assert_eq!(
        net.rt.block_on(net.node.claim(d)).unwrap().trace_root,
        truth.trace_root()
    );
    net.mine(MOVE_BLOCKS + 1);
    net.rt.block_on(net.client.timeout_game(g)).unwrap();
    assert_eq!(net.rt.block_on(net.node.claim(d)).unwrap().owner, node_addr);
    assert_eq!(
        net.stake(node_addr),
        stake_before,
        "the honest node keeps its stake"
    );
}
