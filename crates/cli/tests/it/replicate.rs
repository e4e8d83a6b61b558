//! Replication between real node processes on loopback: a multi-chunk model is pulled from several peers
//! in parallel, a peer serving corrupted chunks is refused, a pull killed half-way resumes with the chunks
//! it already had, and a node asked for a model it lacks fetches it on demand (also via `verity model
//! pull`).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use verity_core::{Hash, SecretKey};
use verity_engine::ir::{Const, Input, InputKind, Model, Node, Op, Output};

use super::node::{http, model_id_of, publish_raw, signed_manifest, NodeProc};
use super::verity;

/// A one-node model `y = x + c` with `n` constants: about 4n bytes, so several 1 MiB chunks.
pub fn big_model(dir: &Path, n: u32) -> (std::path::PathBuf, Vec<u8>, Hash) {
    let mut state = 0x9e3779b97f4a7c15u64;
    let data: Vec<i32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // values that need all 32 bits, so the file keeps 4 bytes per element
            (state % 2_000_000_001) as i32 - 1_000_000_000
        })
        .collect();
    let m = Model {
        inputs: vec![Input {
            name: "x".into(),
            shape: vec![1, n],
            scale: 8,
            kind: InputKind::Fixed,
        }],
        consts: vec![Const {
            shape: vec![1, n],
            scale: 8,
            data: data.into(),
        }],
        nodes: vec![Node {
            name: "add".into(),
            op: Op::Add,
            inputs: vec![0, 1],
            shape: vec![1, n],
            scale: 8,
        }],
        outputs: vec![Output {
            name: "y".into(),
            value: 2,
        }],
    };
    let bytes = verity_engine::vty::encode(&m);
    let path = dir.join("big.vty");
    std::fs::write(&path, &bytes).unwrap();
    let id = model_id_of(&path);
    (path, bytes, id)
}

fn pull(node: &NodeProc, id: &Hash, peers: &[&str]) -> Value {
    let r = http()
        .post(format!("{}/v1/models/{id}/pull", node.url))
        .json(&json!({ "peers": peers }))
        .send()
        .unwrap();
    let status = r.status();
    let v: Value = r.json().unwrap();
    assert!(status.is_success(), "pull failed: {status} {v}");
    v
}

fn download(node: &NodeProc, id: &Hash) -> Vec<u8> {
    let r = http()
        .get(format!("{}/v1/models/{id}/download", node.url))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "download: {}", r.status());
    r.bytes().unwrap().to_vec()
}

fn chunk_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir.join("chunks")) else {
        return 0;
    };
    rd.flatten()
        .filter(|d| d.path().is_dir())
        .map(|d| std::fs::read_dir(d.path()).map(|r| r.count()).unwrap_or(0))
        .sum()
}

#[test]
fn replication_is_parallel_refuses_bad_peers_resumes_and_serves_on_demand() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (vty, bytes, id) = big_model(t, 2_600_000);
    let chunks = bytes.len().div_ceil(1 << 20);
    assert!(chunks >= 9, "a multi-chunk model ({chunks} chunks)");
    let owner = SecretKey::from_bytes(&[0x42; 32]).unwrap();
    let manifest = signed_manifest(&owner, id, "big", "1.0.0");

    // A: honest source. B: serves every chunk with a flipped byte.
    let a = NodeProc::start(&t.join("a"), &[]);
    let b = NodeProc::start(&t.join("b"), &["--fault", "corrupt-chunks"]);
    for n in [&a, &b] {
        let r = publish_raw(&n.url, manifest.clone(), bytes.clone());
        assert!(r.status().is_success(), "publish: {}", r.status());
    }

    // C pulls from [B, A]: B is refused at its first chunk, everything comes from A.
    let c = NodeProc::start(&t.join("c"), &["--hosting", "none"]);
    let r = pull(&c, &id, &[&b.url, &a.url]);
    assert_eq!(r["chunks"], chunks, "{r}");
    assert_eq!(r["fetched"], chunks, "{r}");
    let refused = r["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{r}");
    assert!(
        refused[0].as_str().unwrap().starts_with(&b.url)
            && refused[0].as_str().unwrap().contains("hash to"),
        "B refused for bad bytes: {r}"
    );
    assert_eq!(r["from"][&a.url], chunks, "all chunks from A: {r}");
    assert!(r["from"].get(&b.url).is_none(), "nothing kept from B: {r}");
    assert_eq!(download(&c, &id), bytes, "C serves the exact model");
    let info: Value = http()
        .get(format!("{}/v1/models/big@1.0.0", c.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        info["model_id"],
        json!(id),
        "the owner's version came along: {info}"
    );

    // D pulls from A and C at once: chunks come from both.
    let d = NodeProc::start(&t.join("d"), &["--hosting", "none"]);
    let r = pull(&d, &id, &[&a.url, &c.url]);
    assert_eq!(r["fetched"], chunks, "{r}");
    assert_eq!(
        r["from"].as_object().unwrap().len(),
        2,
        "two peers served: {r}"
    );
    assert_eq!(download(&d, &id), bytes);
    let again = pull(&d, &id, &[&a.url]);
    assert_eq!(again["already_stored"], true, "{again}");

    // E pulls one chunk at a time from a slow peer and is killed half-way; after a restart the pull
    // fetches only what is missing.
    let slow = NodeProc::start(&t.join("slow"), &["--fault", "stall=300"]);
    let r = publish_raw(&slow.url, manifest.clone(), bytes.clone());
    assert!(r.status().is_success());
    let edir = t.join("e");
    std::fs::create_dir_all(&edir).unwrap();
    std::fs::write(
        edir.join("config.toml"),
        "[hosting]\npolicy = \"none\"\nparallel_chunks = 1\n",
    )
    .unwrap();
    let mut e = NodeProc::start(&edir, &[]);
    let url = format!("{}/v1/models/{id}/pull", e.url);
    let slow_url = slow.url.clone();
    let bg = std::thread::spawn(move || {
        let _ = reqwest::blocking::Client::new()
            .post(url)
            .json(&json!({ "peers": [slow_url] }))
            .timeout(Duration::from_secs(60))
            .send();
    });
    let start = Instant::now();
    while chunk_files(&edir) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "E makes progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    e.kill9();
    let _ = bg.join();
    let had = chunk_files(&edir);
    assert!(
        had >= 3 && had < chunks,
        "killed half-way ({had} of {chunks})"
    );
    let e = NodeProc::start(&edir, &[]);
    let r = pull(&e, &id, &[&a.url]);
    assert_eq!(
        r["fetched"].as_u64().unwrap() as usize,
        chunks - had,
        "only the missing chunks are fetched after the restart: {r}"
    );
    assert_eq!(download(&e, &id), bytes);

    // F knows A as a peer: asking it for the model by ID fetches it on demand, through the API and
    // through `verity model pull`.
    let f = NodeProc::start(&t.join("f"), &["--hosting", "none", "--peer", &a.url]);
    let out = t.join("pulled.vty");
    let o = verity(&[
        "model",
        "pull",
        &id.to_string(),
        "--node",
        &f.url,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert_eq!(std::fs::read(&vty).unwrap(), bytes);
    // A node with no way to find the model still answers 404.
    let lonely = NodeProc::start(&t.join("g"), &["--hosting", "none"]);
    let r = http()
        .get(format!("{}/v1/models/{id}", lonely.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Pulling from peers that do not have it: a clear 404.
    let r = http()
        .post(format!("{}/v1/models/{id}/pull", lonely.url))
        .json(&json!({"peers": [lonely.url.clone()]}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let v: Value = r.json().unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("serves model"),
        "{v}"
    );
}
