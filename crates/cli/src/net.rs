//! Commands that talk to a node (`model publish|ls|show|pull`, `infer`), run one (`node`), and manage
//! keys (`key new|show`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use verity_core::{keccak256, Hash, Manifest, SecretKey};
use verity_engine::vty;

/// Where the node is.
#[derive(Args, Debug, Clone)]
pub struct NodeUrl {
    /// Node URL.
    #[arg(
        long = "node",
        env = "VERITY_NODE",
        default_value = "http://127.0.0.1:7070"
    )]
    pub url: String,
}

impl NodeUrl {
    pub(crate) fn base(&self) -> String {
        self.url.trim_end_matches('/').to_string()
    }
}

/// The nodes a request may go to, in order of preference.
#[derive(Args, Debug, Clone)]
pub struct NodeList {
    /// Node URL; several (comma-separated or repeated) to fail over: when a node cannot be reached, is
    /// overloaded or failing (HTTP 5xx or 429), lacks the model, or — with --quorum — returns a
    /// certificate that does not verify, the next one is asked.
    #[arg(
        long = "node",
        env = "VERITY_NODE",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070"
    )]
    pub urls: Vec<String>,
}

/// Why one node of a [`NodeList`] did not serve a request.
enum Fail {
    /// Another node may do better (unreachable, overloaded, failing, lacks the model, lied).
    Next(anyhow::Error),
    /// Asking elsewhere would not help (the request itself is wrong, or the nodes disagree).
    Stop(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Fail {
    fn from(e: E) -> Fail {
        Fail::Stop(e.into())
    }
}

/// Whether a node's error status leaves another node a chance: it is unavailable, overloaded or
/// failing, or does not have what was asked for.
fn worth_another_node(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 404
}

/// Run `f` on each node of `urls` in turn until one serves; every node passed over is reported on stderr.
/// With one node its error is returned as it is; with several, each node's.
fn on_each_node<T>(urls: &[String], mut f: impl FnMut(&str) -> Result<T, Fail>) -> Result<T> {
    let mut passed = Vec::new();
    for u in urls {
        let base = u.trim_end_matches('/');
        match f(base) {
            Ok(v) => return Ok(v),
            Err(Fail::Stop(e)) => return Err(e),
            Err(Fail::Next(e)) => {
                if urls.len() > 1 {
                    eprintln!("node {base}: {e:#}; asking the next node");
                }
                passed.push((base.to_string(), e));
            }
        }
    }
    if passed.len() == 1 {
        let (_, e) = passed.remove(0);
        return Err(e);
    }
    let lines: Vec<String> = passed
        .iter()
        .map(|(b, e)| format!("  {b}: {e:#}"))
        .collect();
    bail!(
        "none of the {} nodes served the request:\n{}",
        passed.len(),
        lines.join("\n")
    )
}

/// Send `req` to a node of a [`NodeList`]: its JSON answer, or why it failed and whether another node
/// may do better.
fn ask(req: reqwest::blocking::RequestBuilder, url: &str, what: &str) -> Result<Value, Fail> {
    let resp = send(req, url).map_err(Fail::Next)?;
    let status = resp.status();
    json_or_error(resp, what).map_err(|e| {
        if worth_another_node(status) {
            Fail::Next(e)
        } else {
            Fail::Stop(e)
        }
    })
}

/// Which key signs.
#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// Key file (64 hex digits). Default: `$VERITY_KEY_FILE`, else `~/.verity/key`.
    #[arg(long = "key", env = "VERITY_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

fn default_key_path() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".verity").join("key")
}

impl KeyArgs {
    fn path(&self) -> PathBuf {
        self.key_file.clone().unwrap_or_else(default_key_path)
    }

    /// The key: `$VERITY_KEY` (hex) if set, else the key file.
    pub fn load(&self) -> Result<SecretKey> {
        if let Ok(h) = std::env::var("VERITY_KEY") {
            return SecretKey::from_hex(&h).map_err(|e| anyhow!("VERITY_KEY: {e}"));
        }
        let p = self.path();
        if !p.exists() {
            bail!(
                "no key at {} (create one with `verity key new`, or set VERITY_KEY)",
                p.display()
            );
        }
        verity_node::key::read_key_file(&p).map_err(|e| anyhow!(e))
    }
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Create a secp256k1 key (file mode 0600) and print its address.
    New(KeyNewArgs),
    /// Print the address of a key.
    Show(KeyArgs),
}

#[derive(Args, Debug)]
pub struct KeyNewArgs {
    #[command(flatten)]
    key: KeyArgs,
}

pub fn cmd_key(c: KeyCmd) -> Result<()> {
    match c {
        KeyCmd::New(a) => {
            let p = a.key.path();
            if p.exists() {
                bail!(
                    "{} already exists; refusing to overwrite a key",
                    p.display()
                );
            }
            let k = SecretKey::random();
            verity_node::key::write_key_file(&p, &k)
                .with_context(|| format!("cannot write {}", p.display()))?;
            println!("{}", k.address());
            eprintln!("key written to {}", p.display());
            Ok(())
        }
        KeyCmd::Show(a) => {
            println!("{}", a.load()?.address());
            Ok(())
        }
    }
}

pub(crate) fn client(timeout: Duration) -> Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("cannot build an HTTP client")
}

/// Turn a response into JSON, or an error carrying the node's error code and message.
pub(crate) fn json_or_error(resp: reqwest::blocking::Response, what: &str) -> Result<Value> {
    let status = resp.status();
    let text = resp.text().context("cannot read the node's response")?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    if !status.is_success() {
        let code = v["error"]["code"].as_str().unwrap_or("error");
        let msg = v["error"]["message"].as_str().unwrap_or(text.as_str());
        bail!("{what} failed: HTTP {} {code}: {msg}", status.as_u16());
    }
    Ok(v)
}

fn send(req: reqwest::blocking::RequestBuilder, url: &str) -> Result<reqwest::blocking::Response> {
    req.send()
        .with_context(|| format!("cannot reach the node at {url}"))
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The model: an ONNX file (the node compiles it and checks the ID), a `.vty` file, or a GGUF
    /// language model (its decode step is compiled here and published, the GGUF's hash as source).
    file: PathBuf,
    /// Model name.
    #[arg(long)]
    name: String,
    /// Version.
    #[arg(long)]
    version: String,
    /// Description.
    #[arg(long, default_value = "")]
    description: String,
    /// Task, e.g. `image-classification`.
    #[arg(long, default_value = "")]
    task: String,
    /// License.
    #[arg(long, default_value = "")]
    license: String,
    /// Tags (repeat).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Compile report JSON to attach (signed by hash); for ONNX files one is made here if not given.
    #[arg(long)]
    report: Option<PathBuf>,
    /// For `.vty` files: the ONNX file it was compiled from (its hash goes in the manifest).
    #[arg(long)]
    source: Option<PathBuf>,
    /// Compile options for ONNX files (as for `verity model compile`; the node compiles with the same).
    #[command(flatten)]
    compile: crate::CompileFlags,
    /// For GGUF files: positions a generation may hold (the step's context).
    #[arg(long, default_value_t = crate::llm::DEFAULT_CONTEXT)]
    context: usize,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    node: NodeUrl,
}

pub fn cmd_publish(a: PublishArgs) -> Result<()> {
    let key = a.key.load()?;
    let bytes =
        std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let is_vty = bytes.starts_with(b"VTY");
    let mut options = None;
    let mut file_name = a
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_string();
    let (bytes, model_id, source_hash, mut report) = if is_vty {
        let (_, id) = vty::decode(&bytes)
            .with_context(|| format!("{} is not a valid model", a.file.display()))?;
        let source = match &a.source {
            Some(p) => keccak256(
                &std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
            ),
            None => Hash::ZERO,
        };
        (bytes, id, source, None)
    } else if bytes.starts_with(b"GGUF") {
        // A language model: its decode step is the canonical model the node serves.
        let source = keccak256(&bytes);
        let (step, report) = crate::llm::compile_step(bytes, &a.file, a.context)?;
        let (vty_bytes, id) = vty::encode_with_id(&step);
        file_name = format!(
            "{}.vty",
            a.file
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or("model")
        );
        (vty_bytes, id, source, Some(report))
    } else {
        // Compile here with the same options the node will use, to learn the ID the manifest signs.
        let co = a.compile.options()?;
        let (m, rep) = verity_compiler::compile(&bytes, &co)
            .with_context(|| format!("cannot compile {}", a.file.display()))?;
        options = Some(a.compile.to_json());
        let (id, source) = (vty::model_id(&m), keccak256(&bytes));
        (bytes, id, source, Some(serde_json::to_vec(&rep)?))
    };
    if let Some(p) = &a.report {
        report = Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?);
    }
    let manifest = Manifest {
        model_id,
        name: a.name.clone(),
        version: a.version.clone(),
        description: a.description,
        task: a.task,
        license: a.license,
        tags: a.tags,
        owner: key.address(),
        source_hash,
        report_hash: report.as_deref().map(keccak256).unwrap_or(Hash::ZERO),
    };
    manifest.validate().map_err(|e| anyhow!(e))?;
    let signed = manifest.sign(&key);
    let mut form = reqwest::blocking::multipart::Form::new()
        .text("manifest", serde_json::to_string(&signed)?)
        .part(
            "model",
            reqwest::blocking::multipart::Part::bytes(bytes).file_name(file_name),
        );
    if let Some(r) = report {
        form = form.part("report", reqwest::blocking::multipart::Part::bytes(r));
    }
    if let Some(o) = options {
        form = form.text("options", o.to_string());
    }
    let url = format!("{}/v1/models", a.node.base());
    let resp = send(
        client(Duration::from_secs(1800))?
            .post(&url)
            .multipart(form),
        &url,
    )?;
    let v = json_or_error(resp, "publish")?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only names or descriptions containing this text.
    #[arg(long)]
    query: Option<String>,
    /// Only models with this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    on_chain: OnChain,
    #[command(flatten)]
    node: NodeUrl,
}

/// `--chain`: read the ModelRegistry instead of asking a node.
#[derive(Args, Debug)]
pub struct OnChain {
    /// Read the ModelRegistry on the chain at this JSON-RPC URL (with --contracts) instead of asking a
    /// node: every registered model with its owner, price and the nodes announcing it.
    #[arg(long = "chain")]
    rpc: Option<String>,
    /// Deployment file (contract addresses) for --chain, e.g. `<devnet dir>/contracts.json`.
    #[arg(long, env = "VERITY_CONTRACTS")]
    contracts: Option<PathBuf>,
}

impl OnChain {
    /// The chain to read, if --chain was given.
    fn chain(&self) -> Result<Option<crate::registry::ChainArgs>> {
        let Some(rpc) = &self.rpc else {
            return Ok(None);
        };
        let contracts = self
            .contracts
            .clone()
            .ok_or_else(|| anyhow!("--chain needs --contracts (the deployment file)"))?;
        Ok(Some(crate::registry::ChainArgs {
            rpc: rpc.clone(),
            contracts,
        }))
    }
}

pub fn cmd_ls(a: LsArgs) -> Result<()> {
    if let Some(c) = a.on_chain.chain()? {
        if a.tag.is_some() {
            bail!("--tag filters a node's list; the chain holds no tags");
        }
        return crate::registry::ls_chain(&c, a.query.as_deref(), a.json);
    }
    let url = format!("{}/v1/models", a.node.base());
    let mut q = Vec::new();
    if let Some(s) = &a.query {
        q.push(("q", s.clone()));
    }
    if let Some(t) = &a.tag {
        q.push(("tag", t.clone()));
    }
    let req = client(Duration::from_secs(60))?.get(&url).query(&q);
    let v = json_or_error(send(req, &url)?, "list")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for m in v["models"].as_array().into_iter().flatten() {
        println!(
            "{}@{}{}  {}  {}",
            m["name"].as_str().unwrap_or(""),
            m["version"].as_str().unwrap_or(""),
            if m["latest"].as_bool() == Some(true) {
                " (latest)"
            } else {
                ""
            },
            m["model_id"].as_str().unwrap_or(""),
            m["tags"]
                .as_array()
                .map(|t| t
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default()
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// `0x<model id>`, `name@version` or `name` (latest).
    model: String,
    #[command(flatten)]
    on_chain: OnChain,
    #[command(flatten)]
    node: NodeUrl,
}

pub fn cmd_show(a: ShowArgs) -> Result<()> {
    if let Some(c) = a.on_chain.chain()? {
        return crate::registry::show_chain(&c, &a.model);
    }
    let url = format!("{}/v1/models/{}", a.node.base(), a.model);
    let v = json_or_error(
        send(client(Duration::from_secs(60))?.get(&url), &url)?,
        "show",
    )?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// `0x<model id>`, `name@version` or `name` (latest).
    model: String,
    /// Where to write the `.vty` file.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    node: NodeUrl,
}

pub fn cmd_pull(a: PullArgs) -> Result<()> {
    let base = a.node.base();
    let info_url = format!("{base}/v1/models/{}", a.model);
    let info = json_or_error(
        send(client(Duration::from_secs(60))?.get(&info_url), &info_url)?,
        "pull",
    )?;
    let want: Hash = info["model_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("the node's answer has no model_id"))?;
    let url = format!("{base}/v1/models/{want}/download");
    let resp = send(client(Duration::from_secs(3600))?.get(&url), &url)?;
    if !resp.status().is_success() {
        json_or_error(resp, "download")?;
        bail!("download failed");
    }
    let bytes = resp.bytes().context("download interrupted")?;
    let (_, got) = vty::decode(&bytes).context("the downloaded model does not decode")?;
    if got != want {
        bail!("the node served model {got}, not {want}: refusing it");
    }
    let tmp = a.output.with_extension("vty.part");
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.output)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    println!(
        "{want}  {} ({} bytes, ID verified)",
        a.output.display(),
        bytes.len()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct InferArgs {
    /// `0x<model id>`, `name@version` or `name` (latest).
    model: String,
    /// Input: JSON (`{"name": tensor}` or one tensor) or `.npy`; `name=file.npy` per input.
    #[arg(long, required = true)]
    input: Vec<String>,
    /// Bind the receipt to this request ID (32 bytes hex); default: the node picks one.
    #[arg(long)]
    request_id: Option<Hash>,
    /// Write the signed receipt here (for `verity verify`).
    #[arg(long)]
    save_receipt: Option<PathBuf>,
    /// Write the full response (outputs with scales, receipt) here.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Ask k nodes drawn from the on-chain registry (the node coordinates) and require a quorum
    /// certificate, checked here before anything is printed.
    #[arg(long)]
    quorum: Option<u8>,
    /// With --quorum: write the certificate here (for `verity verify`).
    #[arg(long)]
    certificate: Option<PathBuf>,
    /// With --quorum: if the nodes disagree, write the evidence (every signed receipt) here.
    #[arg(long)]
    evidence: Option<PathBuf>,
    /// With --quorum: fail on the first disagreement instead of asking more nodes.
    #[arg(long)]
    no_widen: bool,
    /// With --quorum: per-node time limit in milliseconds.
    #[arg(long, default_value_t = 15000)]
    timeout_ms: u64,
    /// zk mode: the node also proves the inference; the proof file is written here (check it with
    /// `verity verify <file> --model <model.vty>`).
    #[arg(long, conflicts_with = "quorum")]
    zk_proof: Option<PathBuf>,
    #[command(flatten)]
    node: NodeList,
}

fn infer_quorum(a: &InferArgs, base: &str, k: u8, inputs: &[Named]) -> Result<(), Fail> {
    let http = client(Duration::from_secs(300))?;
    let mut obj = serde_json::Map::new();
    for (n, s, d) in inputs {
        obj.insert(n.clone(), json!({"shape": s, "data": d}));
    }
    let mut doc = json!({ "inputs": obj });
    if let Some(r) = a.request_id {
        doc["request_id"] = json!(r);
    }
    let url = format!(
        "{base}/v1/models/{}/quorum?k={k}&widen={}&timeout_ms={}",
        a.model, !a.no_widen, a.timeout_ms
    );
    let resp = send(http.post(&url).json(&doc), &url).map_err(Fail::Next)?;
    let status = resp.status();
    let v: Value = resp
        .json()
        .map_err(|e| Fail::Next(anyhow!("{url} answered {status} without JSON ({e})")))?;
    if !status.is_success() {
        // Disagreeing nodes are evidence, not a coordinator's failure: no other coordinator is asked.
        let disagreement = v.get("evidence").is_some();
        if let (Some(p), Some(e)) = (&a.evidence, v.get("evidence")) {
            std::fs::write(p, serde_json::to_vec_pretty(e)?)
                .with_context(|| format!("cannot write {}", p.display()))?;
        }
        let mut msg = v["error"]["message"]
            .as_str()
            .unwrap_or("no message")
            .to_string();
        if let Some(groups) = v["evidence"]["groups"].as_array() {
            for g in groups {
                msg.push_str(&format!(
                    "\n  output {} from nodes {}",
                    g["output_hash"].as_str().unwrap_or("?"),
                    g["nodes"]
                        .as_array()
                        .map(|n| n
                            .iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                ));
            }
            if let Some(p) = &a.evidence {
                msg.push_str(&format!(
                    "\n  evidence (signed receipts) written to {}",
                    p.display()
                ));
            }
        }
        if let Some(att) = v["attempts"].as_array() {
            for t in att {
                let o = t["outcome"].as_str().unwrap_or("");
                if o != "agreed" && o != "dissented" {
                    msg.push_str(&format!(
                        "\n  node {} ({}): {o}",
                        t["node"].as_str().unwrap_or("?"),
                        t["endpoint"].as_str().unwrap_or("?")
                    ));
                }
            }
        }
        let e = anyhow!("quorum of {k} not reached (HTTP {status}): {msg}");
        return Err(if disagreement || !worth_another_node(status) {
            Fail::Stop(e)
        } else {
            Fail::Next(e)
        });
    }
    // Trust nothing the coordinator said: check the certificate and the outputs here.
    // A coordinator whose answer does not hold up is passed over like one that is down.
    let lied = |e: anyhow::Error| Fail::Next(e);
    let cert: verity_chain::cert::QuorumCertificate =
        serde_json::from_value(v["certificate"].clone()).map_err(|_| {
            lied(anyhow!(
                "the coordinator's answer has no quorum certificate"
            ))
        })?;
    let summary = verity_chain::cert::verify_certificate(&cert).map_err(|e| {
        lied(anyhow!(
            "the coordinator's certificate does not verify: {e}"
        ))
    })?;
    if cert.k != k {
        return Err(lied(anyhow!(
            "the certificate is for k = {}, not {k}",
            cert.k
        )));
    }
    let h = verity_node::roles::quorum::outputs_hash(&v["outputs"])
        .map_err(|e| lied(anyhow!("the coordinator's outputs: {e}")))?;
    if h != cert.output_hash {
        return Err(lied(anyhow!(
            "the coordinator's outputs hash to {h}, its certificate says {}",
            cert.output_hash
        )));
    }
    if let Some(p) = &a.certificate {
        std::fs::write(p, serde_json::to_vec_pretty(&cert)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &a.output {
        std::fs::write(p, serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    eprintln!(
        "quorum    {k} of {} nodes agree (draw positions {:?}); certificate consistent (its signers are checked against the chain by `verity verify --chain`)",
        cert.registry.nodes.len(),
        summary.positions
    );
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Read inputs for a model whose IO schema is `inputs` (from the node): returns name → (shape, data).
/// A named input: name, shape, values.
type Named = (String, Vec<usize>, Vec<f64>);

fn read_inputs(specs: &[String], inputs: &[Value]) -> Result<Vec<Named>> {
    let names: Vec<String> = inputs
        .iter()
        .filter_map(|i| i["name"].as_str().map(str::to_string))
        .collect();
    let mut out = Vec::new();
    for s in specs {
        let (name, file) = match s.split_once('=') {
            Some((n, f)) if !Path::new(s).exists() => (Some(n.to_string()), f),
            _ => (None, s.as_str()),
        };
        let bytes = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
        if file.ends_with(".npy") {
            let t = verity_engine::io::tensor_from_npy(&bytes).with_context(|| file.to_string())?;
            let name = match name {
                Some(n) => n,
                None if names.len() == 1 => names[0].clone(),
                None => bail!(
                    "the model has {} inputs; give each as name=file.npy",
                    names.len()
                ),
            };
            out.push((name, t.shape, t.data));
            continue;
        }
        let v: Value =
            serde_json::from_slice(&bytes).with_context(|| format!("{file} is not JSON"))?;
        let is_tensor = v.is_array()
            || v.as_object()
                .is_some_and(|o| o.contains_key("shape") && o.contains_key("data"));
        if is_tensor {
            let t = verity_engine::io::tensor_from_json(&v)?;
            let name = match name {
                Some(n) => n,
                None if names.len() == 1 => names[0].clone(),
                None => bail!(
                    "the model has {} inputs; give them as an object keyed by input name",
                    names.len()
                ),
            };
            out.push((name, t.shape, t.data));
        } else {
            let obj = v
                .as_object()
                .ok_or_else(|| anyhow!("{file}: expected an object keyed by input name"))?;
            for (k, t) in obj {
                let t = verity_engine::io::tensor_from_json(t)
                    .with_context(|| format!("{file}: input '{k}'"))?;
                out.push((k.clone(), t.shape, t.data));
            }
        }
    }
    Ok(out)
}

/// `verity dispute` arguments.
#[derive(Args, Debug)]
pub struct DisputeArgs {
    /// The receipt: a signed receipt file (`--save-receipt`, `GET /v1/receipts/…`) or a whole inference
    /// response holding one under "receipt".
    receipt: PathBuf,
    /// Its input, as for `verity infer`: JSON (`{"name": tensor}` or one tensor) or `.npy`
    /// (`name=file.npy` per input).
    #[arg(long, required = true)]
    input: Vec<String>,
    #[command(flatten)]
    node: NodeUrl,
}

pub fn cmd_dispute(a: DisputeArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.receipt)
        .with_context(|| format!("cannot read {}", a.receipt.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", a.receipt.display()))?;
    let receipt = if v.get("receipt").is_some_and(Value::is_object) {
        v["receipt"].clone()
    } else {
        v
    };
    let r: verity_core::SignedReceipt = serde_json::from_value(receipt.clone())
        .with_context(|| format!("{} holds no signed receipt", a.receipt.display()))?;
    let base = a.node.base();
    let http = client(Duration::from_secs(300))?;
    // the model's input names, when the node has it (needed only for .npy inputs without a name)
    let info_url = format!("{base}/v1/models/{}", r.receipt.model_id);
    let info = send(http.get(&info_url), &info_url)
        .ok()
        .and_then(|resp| resp.json::<Value>().ok())
        .unwrap_or_default();
    let inputs = read_inputs(
        &a.input,
        info["inputs"].as_array().map(Vec::as_slice).unwrap_or(&[]),
    )?;
    let mut obj = serde_json::Map::new();
    for (n, s, d) in &inputs {
        obj.insert(n.clone(), json!({"shape": s, "data": d}));
    }
    let url = format!("{base}/v1/disputes");
    let out = json_or_error(
        send(
            http.post(&url)
                .json(&json!({"receipt": receipt, "inputs": obj})),
            &url,
        )?,
        "dispute",
    )?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    match out["state"].as_str() {
        Some("agreed") => eprintln!(
            "the receipt of {} is right: {base} re-executed it and got the same output and trace",
            r.receipt.node
        ),
        Some("disputed") => eprintln!(
            "the receipt of {} is wrong: {base} disputed it at the ReceiptCourt (dispute {}, game {}) and plays the game",
            r.receipt.node, out["dispute"], out["game"]
        ),
        _ => {}
    }
    Ok(())
}

pub fn cmd_infer(a: InferArgs) -> Result<()> {
    on_each_node(&a.node.urls, |base| infer_on(&a, base))
}

/// `verity infer` on the node at `base`.
fn infer_on(a: &InferArgs, base: &str) -> Result<(), Fail> {
    let info_url = format!("{base}/v1/models/{}", a.model);
    let http = client(Duration::from_secs(300))?;
    let info = ask(http.get(&info_url), &info_url, "infer")?;
    let inputs = read_inputs(
        &a.input,
        info["inputs"].as_array().map(Vec::as_slice).unwrap_or(&[]),
    )?;
    if let Some(k) = a.quorum {
        return infer_quorum(a, base, k, &inputs);
    }
    let url = format!("{base}/v1/models/{}/infer", a.model);
    let total: usize = inputs.iter().map(|t| t.2.len()).sum();
    let req = if total > 4096 {
        // The binary form: a JSON header, then FP64 little-endian data.
        let mut raw = Vec::with_capacity(total * 8);
        let header_inputs: Vec<Value> = inputs
            .iter()
            .map(|(n, s, d)| {
                for x in d {
                    raw.extend_from_slice(&x.to_le_bytes());
                }
                json!({"name": n, "shape": s, "datatype": "FP64", "parameters": {"binary_data_size": d.len() * 8}})
            })
            .collect();
        let mut header = json!({"inputs": header_inputs});
        if let Some(r) = a.request_id {
            header["request_id"] = json!(r);
        }
        if a.zk_proof.is_some() {
            header["mode"] = json!("zk");
        }
        let h = serde_json::to_vec(&header)?;
        let hlen = h.len();
        let mut body = h;
        body.extend_from_slice(&raw);
        http.post(&url)
            .header("Inference-Header-Content-Length", hlen.to_string())
            .header("Content-Type", "application/octet-stream")
            .body(body)
    } else {
        let mut obj = serde_json::Map::new();
        for (n, s, d) in &inputs {
            obj.insert(n.clone(), json!({"shape": s, "data": d}));
        }
        let mut doc = json!({"inputs": obj});
        if let Some(r) = a.request_id {
            doc["request_id"] = json!(r);
        }
        if a.zk_proof.is_some() {
            doc["mode"] = json!("zk");
        }
        http.post(&url).json(&doc)
    };
    let mut v = ask(req, &url, "inference")?;
    if let Some(p) = &a.zk_proof {
        use base64::Engine as _;
        let b64 = v["zk"]["proof"]
            .as_str()
            .ok_or_else(|| anyhow!("the node returned no proof"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("the node's proof is not base64")?;
        std::fs::write(p, &bytes).with_context(|| format!("cannot write {}", p.display()))?;
        v["zk"]["proof"] = json!(p.display().to_string());
    }
    if let Some(p) = &a.save_receipt {
        std::fs::write(p, serde_json::to_vec_pretty(&v["receipt"])?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &a.output {
        std::fs::write(p, serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Flags of `verity node` (each overrides the config file).
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// TOML config file (default: `<data-dir>/config.toml` if present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address (`127.0.0.1:0` picks a free port).
    #[arg(long)]
    listen: Option<String>,
    /// Node key file (created if missing). `VERITY_NODE_KEY` (hex) takes precedence.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// EIP-712 chain ID of receipts.
    #[arg(long)]
    chain_id: Option<u64>,
    /// EIP-712 verifying contract of receipts.
    #[arg(long)]
    verifying_contract: Option<verity_core::Address>,
    /// Inference worker threads.
    #[arg(long)]
    workers: Option<usize>,
    /// Largest request body (bytes).
    #[arg(long)]
    max_body_bytes: Option<u64>,
    /// Largest model upload (bytes).
    #[arg(long)]
    max_model_bytes: Option<u64>,
    /// Most elements per input tensor.
    #[arg(long)]
    max_tensor_elements: Option<u64>,
    /// Whole-request timeout in seconds (uploads excepted).
    #[arg(long)]
    request_timeout: Option<u64>,
    /// Log format: text or json.
    #[arg(long)]
    log_format: Option<String>,
    /// Take part in settlement: the chain's JSON-RPC URL (needs --contracts).
    #[arg(long, requires = "contracts")]
    chain: Option<String>,
    /// The deployment file (contract addresses), e.g. `.verity-devnet/contracts.json`.
    #[arg(long, requires = "chain")]
    contracts: Option<PathBuf>,
    /// Public URL to register on-chain (default `http://<listen address>`).
    #[arg(long)]
    endpoint: Option<String>,
    /// Stake to put up when registering, in wei.
    #[arg(long)]
    stake: Option<String>,
    /// Which models to host: all, list, target or none (see `hosting` in the config).
    #[arg(long)]
    hosting: Option<String>,
    /// A peer to fetch models from (base URL; repeatable), besides those in the NodeRegistry.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Also watch optimistic results: re-execute this fraction (0–1) of other nodes' claims and
    /// challenge any that is wrong.
    #[arg(long)]
    watch_rate: Option<f64>,
    /// Serve this GGUF language model through the OpenAI-compatible API (repeatable; its name is
    /// the file name without `.gguf`, or give `NAME=PATH`).
    #[arg(long = "llm")]
    llms: Vec<String>,
    /// Positions each --llm generation can hold (prompt and output).
    #[arg(long, default_value_t = verity_node::config::default_llm_context())]
    llm_context: usize,
    /// Generations each --llm model runs at once (a prompt chunk or a token of each in turn).
    #[arg(long, default_value_t = verity_node::config::default_llm_sequences())]
    llm_sequences: usize,
    /// MiB of key/value caches each --llm model holds (running generations, and caches kept so a
    /// prompt that begins like an earlier context computes only the rest).
    #[arg(long, default_value_t = verity_node::config::default_llm_kv_mb())]
    llm_kv_mb: usize,
    /// Serve this sentence-embedding model through `POST /v1/embeddings` (repeatable): an encoder
    /// directory as sentence-transformers lays one out (ONNX file, tokenizer, pooling); its name is the
    /// directory's name, or give `NAME=DIR`. Compiled at start (cached in the data directory).
    #[arg(long = "embedding")]
    embeddings: Vec<String>,
    /// Test-only misbehaviour for fault tests: corrupt-chunks, perturb-output, stall=<ms>,
    /// corrupt-op=<Op|output>.
    #[arg(long = "fault", hide = true)]
    faults: Vec<String>,
    /// Log filter, e.g. `info` or `verity_node=debug`.
    #[arg(long, env = "VERITY_LOG", default_value = "info")]
    log: String,
}

/// Apply `--fault` flags.
fn parse_faults(faults: &[String], cfg: &mut verity_node::config::Faults) -> Result<()> {
    for f in faults {
        match f.split_once('=') {
            None if f == "corrupt-chunks" => cfg.corrupt_chunks = true,
            None if f == "perturb-output" => cfg.perturb_output = true,
            Some(("stall", ms)) => {
                cfg.stall_ms = ms
                    .parse()
                    .map_err(|_| anyhow!("--fault stall=<milliseconds>, got '{f}'"))?
            }
            Some(("corrupt-op", op)) => cfg.corrupt_op = Some(op.to_string()),
            _ => bail!(
                "unknown --fault '{f}' (corrupt-chunks, perturb-output, stall=<ms>, corrupt-op=<Op|output>)"
            ),
        }
    }
    Ok(())
}

/// Start the node daemon with `cfg` until Ctrl-C or SIGTERM.
fn run_daemon(cfg: verity_node::NodeConfig, log: &str, what: &str) -> Result<()> {
    cfg.validate().map_err(|e| anyhow!(e))?;
    init_logs(&cfg.log_format, log)?;
    if cfg.faults != verity_node::config::Faults::default() {
        tracing::warn!(faults = ?cfg.faults, "TEST-ONLY FAULTS ENABLED: this node misbehaves on purpose");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let env_key = std::env::var("VERITY_NODE_KEY").ok();
    let budget = std::time::Duration::from_secs(cfg.timeouts.shutdown_secs);
    let res = rt.block_on(verity_node::run(
        cfg,
        env_key,
        shutdown_signal(&rt, budget),
        |addr, who| {
            println!("verity {what} listening on http://{addr} as {who}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
        },
    ));
    // Work still running on blocking threads was cancelled; do not wait for it to notice.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    res.map_err(|e| anyhow!(e))
}

/// `verity watch` arguments.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// JSON-RPC URL of the chain.
    #[arg(long, env = "VERITY_CHAIN")]
    chain: String,
    /// The deployment file (contract addresses), e.g. `.verity-devnet/contracts.json`.
    #[arg(long, env = "VERITY_CONTRACTS")]
    contracts: PathBuf,
    /// Fraction (0–1) of claims to re-execute; which ones is drawn with a secret seed.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Data directory (key, sampling seed, fetched models, what was watched).
    #[arg(long, default_value = ".verity-watch")]
    data_dir: PathBuf,
    /// Key file of the account that posts bonds and plays games (created if missing).
    /// `VERITY_NODE_KEY` (hex) takes precedence.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Listen address of the watcher's HTTP API (health, metrics, `/v1/optimistic`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// A node to fetch models from (base URL; repeatable), besides the hosts in the NodeRegistry.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Poll interval in milliseconds.
    #[arg(long, default_value_t = 500)]
    poll_ms: u64,
    /// Test-only misbehaviour (corrupt-op=<Op>: a watcher that challenges with a wrong trace).
    #[arg(long = "fault", hide = true)]
    faults: Vec<String>,
    /// Log filter.
    #[arg(long, env = "VERITY_LOG", default_value = "info")]
    log: String,
}

pub fn cmd_watch(a: WatchArgs) -> Result<()> {
    use verity_node::NodeConfig;
    let mut cfg = NodeConfig {
        data_dir: a.data_dir,
        key_file: a.key_file,
        listen: a.listen,
        ..NodeConfig::default()
    };
    cfg.hosting.policy = "none".into();
    cfg.hosting.peers = a.peers;
    let mut c = verity_node::config::ChainConfig {
        rpc: a.chain,
        contracts: a.contracts,
        poll_ms: a.poll_ms,
        watch_only: true,
        ..Default::default()
    };
    c.optimistic.serve = false;
    c.optimistic.watch_rate = a.rate;
    if !(a.rate > 0.0 && a.rate <= 1.0) {
        bail!("--rate must be above 0 and at most 1, got {}", a.rate);
    }
    cfg.chain = Some(c);
    parse_faults(&a.faults, &mut cfg.faults)?;
    run_daemon(cfg, &a.log, "watcher")
}

pub fn cmd_node(a: NodeArgs) -> Result<()> {
    use verity_node::NodeConfig;
    let data_dir = a.data_dir.clone();
    let mut cfg = match (&a.config, &data_dir) {
        (Some(p), _) => NodeConfig::load(p).map_err(|e| anyhow!(e))?,
        (None, Some(d)) if d.join("config.toml").exists() => {
            NodeConfig::load(&d.join("config.toml")).map_err(|e| anyhow!(e))?
        }
        _ => NodeConfig::default(),
    };
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = a.key_file {
        cfg.key_file = Some(v);
    }
    if let Some(v) = a.chain_id {
        cfg.chain_id = v;
    }
    if let Some(v) = a.verifying_contract {
        cfg.verifying_contract = v;
    }
    if let Some(v) = a.workers {
        cfg.workers = v;
    }
    if let Some(v) = a.max_body_bytes {
        cfg.limits.max_body_bytes = v;
    }
    if let Some(v) = a.max_model_bytes {
        cfg.limits.max_model_bytes = v;
    }
    if let Some(v) = a.max_tensor_elements {
        cfg.limits.max_tensor_elements = v;
    }
    if let Some(v) = a.request_timeout {
        cfg.timeouts.request_secs = v;
    }
    if let Some(v) = a.log_format {
        cfg.log_format = v;
    }
    if let (Some(rpc), Some(file)) = (a.chain, a.contracts) {
        let mut c = cfg.chain.take().unwrap_or_default();
        c.rpc = rpc;
        c.contracts = file;
        cfg.chain = Some(c);
    }
    if let Some(c) = cfg.chain.as_mut() {
        if let Some(e) = a.endpoint {
            c.endpoint = Some(e);
        }
        if let Some(s) = a.stake {
            c.stake = s;
        }
    }
    if let Some(h) = a.hosting {
        cfg.hosting.policy = h;
    }
    cfg.hosting.peers.extend(a.peers);
    if let Some(r) = a.watch_rate {
        match cfg.chain.as_mut() {
            Some(c) => c.optimistic.watch_rate = r,
            None => bail!("--watch-rate needs --chain and --contracts"),
        }
    }
    for l in &a.llms {
        cfg.llm.push(verity_node::config::LlmConfig {
            context: a.llm_context,
            sequences: a.llm_sequences,
            kv_mb: a.llm_kv_mb,
            ..verity_node::config::LlmConfig::from_arg(l)
        });
    }
    for e in &a.embeddings {
        cfg.embedding
            .push(verity_node::config::EmbeddingConfig::from_arg(e));
    }
    parse_faults(&a.faults, &mut cfg.faults)?;
    run_daemon(cfg, &a.log, "node")
}

/// Ctrl-C or SIGTERM, then the shutdown budget (see [`stop_signals`]).
fn shutdown_signal(
    rt: &tokio::runtime::Runtime,
    budget: std::time::Duration,
) -> impl std::future::Future<Output = ()> {
    let stop = stop_signals(rt);
    async move {
        stop.await;
        shutdown_budget(budget);
    }
}

/// A future that resolves on SIGINT or SIGTERM. The handlers are installed here, at once (inside `rt`),
/// not when the future is first polled: a signal that arrives while a process is still starting then
/// stops it cleanly instead of killing it.
pub(crate) fn stop_signals(rt: &tokio::runtime::Runtime) -> impl std::future::Future<Output = ()> {
    let _in_rt = rt.enter();
    #[cfg(unix)]
    let (mut int, mut term) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let int = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            };
            let term = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = int => {},
                _ = term => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Log the shutdown request and make sure the process is gone once `budget` has passed.
fn shutdown_budget(budget: std::time::Duration) {
    tracing::info!("shutdown requested");
    // Whatever happens next, the process is gone by the end of the shutdown time.
    std::thread::spawn(move || {
        std::thread::sleep(budget);
        tracing::error!(
            "still running {} s after the shutdown request; exiting now",
            budget.as_secs()
        );
        std::process::exit(1);
    });
}

fn init_logs(format: &str, filter: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow!("bad log filter '{filter}': {e}"))?;
    // colour codes only on a terminal, never in a log file or a pipe
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let r = if format == "json" {
        b.json().try_init()
    } else {
        b.try_init()
    };
    r.map_err(|e| anyhow!("cannot start logging: {e}"))
}
