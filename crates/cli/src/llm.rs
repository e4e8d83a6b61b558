//! Language models from GGUF files: compiling their decode step, and generating text with it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use verity_core::hash::keccak256;
use verity_engine::vty;
use verity_llm::gguf::Gguf;
use verity_llm::session::argmax;
use verity_llm::{Session, Step, Tokenizer};

/// Positions a generation holds unless `--context` says otherwise.
pub(crate) const DEFAULT_CONTEXT: usize = 1024;

/// Whether `path` is a GGUF file (by its magic).
pub(crate) fn is_gguf(path: &Path) -> bool {
    let mut head = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && &head == b"GGUF"
}

fn open(path: &Path) -> Result<Gguf> {
    if !path.is_file() {
        bail!("cannot read {}: no such file", path.display());
    }
    Ok(Gguf::open(path)?)
}

fn compile(g: &Gguf, context: usize) -> Result<Step> {
    Ok(verity_llm::compile(g, context)?)
}

/// `verity model compile model.gguf -o step.vty`.
pub(crate) fn cmd_compile_gguf(model: &Path, output: &Path, context: usize) -> Result<()> {
    let t0 = Instant::now();
    let g = open(model)?;
    let step =
        compile(&g, context).with_context(|| format!("cannot compile {}", model.display()))?;
    let bytes = vty::encode(&step.model);
    std::fs::write(output, &bytes).with_context(|| format!("cannot write {}", output.display()))?;
    let hp = &step.hp;
    println!("model id     {}", vty::model_id(&step.model));
    println!("written      {} ({} bytes)", output.display(), bytes.len());
    println!(
        "architecture {} — {} layers, width {}, {} heads ({} key/value), vocabulary {}",
        hp.arch, hp.layers, hp.hidden, hp.heads, hp.kv_heads, hp.vocab
    );
    println!(
        "decode step  {} nodes, context {} positions",
        step.model.nodes.len(),
        step.context
    );
    let r = &step.report;
    println!(
        "weights      exact block form; {} multipliers rounded; requantized float matrices: {}",
        r.rounded_multipliers,
        if r.requantized.is_empty() {
            "none".to_string()
        } else {
            r.requantized.join(", ")
        }
    );
    println!("compiled in  {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The model (a GGUF file).
    model: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Render the prompt as a user message with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Largest number of tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Positions the generation can hold (prompt and output).
    #[arg(long, default_value_t = DEFAULT_CONTEXT)]
    context: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print one JSON document (tokens, text, hashes, timings) instead of streaming the text.
    #[arg(long)]
    json: bool,
}

/// keccak256 of token IDs, each a 4-byte big-endian integer (what a receipt binds).
pub fn tokens_hash(ids: &[u32]) -> verity_core::hash::Hash {
    let bytes: Vec<u8> = ids.iter().flat_map(|t| t.to_be_bytes()).collect();
    keccak256(&bytes)
}

/// `verity generate`.
pub(crate) fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let g = open(&a.model)?;
    let tk = Tokenizer::from_gguf(&g)?;
    let text = if a.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(("system".to_string(), s.clone()));
        }
        msgs.push(("user".to_string(), a.prompt.clone()));
        tk.render_chat(&msgs, true)?
    } else {
        a.prompt.clone()
    };
    let prompt = tk.prompt(&text)?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    if prompt.len() + 1 > a.context {
        bail!(
            "the prompt is {} tokens, more than a context of {} positions holds (raise --context)",
            prompt.len(),
            a.context
        );
    }
    let t0 = Instant::now();
    let step = compile(&g, a.context)?;
    let compile_s = t0.elapsed().as_secs_f64();
    let mut s = Session::new(&step, a.threads);
    let t1 = Instant::now();
    let mut logits = Vec::new();
    for &t in &prompt {
        logits = s.feed(t)?;
    }
    let prefill_s = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let mut out = Vec::new();
    let mut pending = Vec::new();
    let mut stdout = std::io::stdout().lock();
    let budget = a.max_tokens.min(a.context - prompt.len());
    while out.len() < budget {
        let t = argmax(&logits);
        out.push(t);
        if tk.stops.contains(&t) {
            break;
        }
        if !a.json {
            // stream whole characters: a token may end inside one
            pending.extend(tk.token_bytes(t));
            let valid = match std::str::from_utf8(&pending) {
                Ok(_) => pending.len(),
                Err(e) => e.valid_up_to(),
            };
            stdout.write_all(&pending[..valid])?;
            stdout.flush()?;
            pending.drain(..valid);
        }
        if out.len() == budget {
            break;
        }
        logits = s.feed(t)?;
    }
    let decode_s = t2.elapsed().as_secs_f64();
    let id = vty::model_id(&step.model);
    let stopped = out.last().is_some_and(|t| tk.stops.contains(t));
    let text_out = tk.decode(if stopped { &out[..out.len() - 1] } else { &out });
    if a.json {
        let doc = serde_json::json!({
            "model_id": id,
            "prompt_tokens": prompt,
            "prompt_hash": tokens_hash(&prompt),
            "output_tokens": out,
            "output_hash": tokens_hash(&out),
            "text": text_out,
            "finish_reason": if stopped { "stop" } else { "length" },
            "sampling": "greedy",
            "timings": {"compile_s": compile_s, "prefill_s": prefill_s, "decode_s": decode_s},
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    stdout.write_all(&pending)?;
    writeln!(stdout)?;
    let per = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    eprintln!(
        "model {id}\nprompt {} tokens, hash {}\noutput {} tokens, hash {} ({})\nprefill {:.1} tokens/s, decode {:.1} tokens/s (compiled in {compile_s:.1} s)",
        prompt.len(),
        tokens_hash(&prompt),
        out.len(),
        tokens_hash(&out),
        if stopped { "stop token" } else { "length" },
        per(prompt.len(), prefill_s),
        per(out.len().saturating_sub(1), decode_s),
    );
    Ok(())
}
