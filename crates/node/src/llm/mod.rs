//! The language models a node serves from GGUF files: each compiled at start, with its tokenizer and a
//! scheduler that runs its generations (`scheduler`).

use std::collections::BTreeMap;
use std::sync::Arc;

use verity_core::hash::{keccak256, Hash};
use verity_llm::gguf::Gguf;
use verity_llm::Tokenizer;

use crate::config::LlmConfig;
use scheduler::{Limits, Scheduler};

pub mod scheduler;

/// A language model being served.
pub struct LlmModel {
    /// The name requests give as `model`.
    pub name: String,
    /// Positions a generation can hold.
    pub context: usize,
    /// The step's model ID.
    pub model_id: Hash,
    /// keccak256 of the GGUF file.
    pub source_hash: Hash,
    /// The file's tokenizer and chat template.
    pub tokenizer: Arc<Tokenizer>,
    /// Unix time the model was loaded.
    pub created: u64,
    /// Runs the model's generations.
    pub scheduler: Scheduler,
}

/// Loads (compiles) every configured model and starts its scheduler; names must be distinct.
pub fn load_all(
    configs: &[LlmConfig],
    threads: usize,
) -> Result<BTreeMap<String, Arc<LlmModel>>, String> {
    let mut out = BTreeMap::new();
    for c in configs {
        let name = c.model_name();
        if out.contains_key(&name) {
            return Err(format!("two language models are named '{name}'"));
        }
        let bytes = std::fs::read(&c.path)
            .map_err(|e| format!("cannot read the language model {}: {e}", c.path.display()))?;
        let source_hash = keccak256(&bytes);
        let g = Gguf::parse(bytes)
            .map_err(|e| format!("{} is not a valid GGUF file: {e}", c.path.display()))?;
        let tokenizer =
            Arc::new(Tokenizer::from_gguf(&g).map_err(|e| format!("{}: {e}", c.path.display()))?);
        let step = verity_llm::compile(&g, c.context)
            .map_err(|e| format!("cannot compile {}: {e}", c.path.display()))?;
        let model_id = verity_engine::vty::model_id(&step.model);
        tracing::info!(name, %model_id, context = c.context, sequences = c.sequences, kv_mb = c.kv_mb,
                       "serving language model");
        let limits = Limits {
            sequences: c.sequences.max(1),
            queue: 4 * c.sequences.max(1),
            kv_bytes: c.kv_mb.saturating_mul(1 << 20),
        };
        let m = LlmModel {
            name: name.clone(),
            context: step.context,
            model_id,
            source_hash,
            tokenizer: tokenizer.clone(),
            created: crate::clock::unix_now(),
            scheduler: Scheduler::start(&name, step, tokenizer, threads, limits),
        };
        out.insert(name, Arc::new(m));
    }
    Ok(out)
}

/// The served models' counters in the Prometheus text format: prompt positions computed and taken
/// from kept caches, output tokens run in several-generation steps and alone.
pub fn render_metrics(models: &std::collections::BTreeMap<String, Arc<LlmModel>>) -> String {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    type Kinds = [(&'static str, fn(&scheduler::Stats) -> u64); 2];
    let families: [(&str, &str, Kinds); 2] = [
        (
            "verity_llm_prompt_positions_total",
            "source",
            [
                ("computed", |s| s.prompt_computed.load(Relaxed)),
                ("reused", |s| s.prompt_reused.load(Relaxed)),
            ],
        ),
        (
            "verity_llm_tokens_total",
            "step",
            [
                ("batched", |s| s.tokens_batched.load(Relaxed)),
                ("alone", |s| s.tokens_alone.load(Relaxed)),
            ],
        ),
    ];
    for (name, label, kinds) in families {
        let _ = writeln!(out, "# TYPE {name} counter");
        for (model, m) in models {
            for (kind, get) in kinds {
                let v = get(&m.scheduler.stats);
                let _ = writeln!(out, "{name}{{model=\"{model}\",{label}=\"{kind}\"}} {v}");
            }
        }
    }
    out
}
