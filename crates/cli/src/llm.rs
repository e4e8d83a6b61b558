//! Language models from GGUF files: compiling their decode step, and generating text with it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use verity_engine::vty;
pub use verity_llm::generate::tokens_hash;
use verity_llm::generate::{decode, input_hash, Format, Rules};
use verity_llm::gguf::Gguf;
use verity_llm::sample::{Params, Sampler};
use verity_llm::{Session, Tokenizer};

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

/// The decode step of the GGUF file `bytes` (read from `path`), and its compile report as JSON.
pub(crate) fn compile_step(
    bytes: Vec<u8>,
    path: &Path,
    context: usize,
) -> Result<(verity_engine::ir::Model, Vec<u8>)> {
    let g = Gguf::parse(bytes)
        .with_context(|| format!("{} is not a valid GGUF file", path.display()))?;
    let step = verity_llm::compile(&g, context)
        .with_context(|| format!("cannot compile {}", path.display()))?;
    let r = &step.report;
    let hp = &step.hp;
    let report = serde_json::json!({
        "kind": "gguf-decode-step",
        "architecture": hp.arch,
        "layers": hp.layers,
        "hidden": hp.hidden,
        "heads": hp.heads,
        "kv_heads": hp.kv_heads,
        "vocabulary": hp.vocab,
        "context": step.context,
        "requantized": r.requantized,
        "rounded_multipliers": r.rounded_multipliers,
    });
    Ok((step.model, serde_json::to_vec(&report)?))
}

/// `verity model compile model.gguf -o step.vty`.
pub(crate) fn cmd_compile_gguf(model: &Path, output: &Path, context: usize) -> Result<()> {
    let t0 = Instant::now();
    let g = open(model)?;
    let step = verity_llm::compile(&g, context)
        .with_context(|| format!("cannot compile {}", model.display()))?;
    let (bytes, id) = vty::encode_with_id(&step.model);
    std::fs::write(output, &bytes).with_context(|| format!("cannot write {}", output.display()))?;
    let hp = &step.hp;
    println!("model id     {id}");
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
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f64,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample among the most likely tokens whose probability reaches p.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f64,
    /// Divide the logits of tokens already in the context by this (multiply negative ones).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    repeat_penalty: f64,
    /// The sampling generator's seed (a seeded sample is the same on every machine).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the output contains this text (repeatable; the text is not printed).
    #[arg(long)]
    stop: Vec<String>,
    /// Print one JSON document (tokens, text, hashes, timings) instead of streaming the text.
    #[arg(long)]
    json: bool,
    /// Limit the output to one JSON object (each token must keep it valid JSON; the generation ends
    /// when the object closes), as a completion's `response_format: {"type": "json_object"}` does.
    #[arg(long)]
    json_object: bool,
    /// Write the canonical step's inputs at this position (token, position, caches) to --dump-file,
    /// for `verity run` on the step `verity model compile` makes with the same --context.
    #[arg(long, requires = "dump_file")]
    dump_step: Option<usize>,
    /// Where --dump-step writes (JSON, as `verity run --input` reads it).
    #[arg(long, requires = "dump_step")]
    dump_file: Option<PathBuf>,
}

/// The step's inputs as `verity run --input` reads them: integers times `2^−scale` (exact in `f64`;
/// `token` and `pos` at scale 0).
fn step_inputs_json(model: &verity_engine::Model, inputs: &[Vec<i32>]) -> serde_json::Value {
    let doc = model.inputs.iter().zip(inputs).map(|(spec, data)| {
        let values = verity_engine::io::dequantize(data, spec.scale);
        (spec.name.clone(), crate::tensor_json(&spec.shape, &values))
    });
    serde_json::Value::Object(doc.collect())
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
    if a.stop.iter().any(String::is_empty) {
        bail!("a --stop text is empty");
    }
    let params = Params {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repeat_penalty,
        seed: a.seed,
    };
    let sampler = Sampler::new(&params)?;
    let rules = Rules {
        max_tokens: a.max_tokens,
        stop: a.stop.clone(),
        format: if a.json_object {
            Format::JsonObject
        } else {
            Format::Text
        },
    };
    if let Some(p) = a.dump_step {
        if p >= (prompt.len() + a.max_tokens).min(a.context) {
            bail!("--dump-step {p} is past the generation's last position");
        }
    }
    let t0 = Instant::now();
    let step = verity_llm::compile(&g, a.context)?;
    let compile_s = t0.elapsed().as_secs_f64();
    let mut s = Session::new(&step, a.threads);
    let dump = |s: &Session, token: u32| -> Result<()> {
        if let (Some(p), Some(file)) = (a.dump_step, &a.dump_file) {
            if s.pos() == p {
                let doc = step_inputs_json(&step.model, &s.inputs(token));
                std::fs::write(file, serde_json::to_vec(&doc)?)
                    .with_context(|| format!("cannot write {}", file.display()))?;
            }
        }
        Ok(())
    };
    let t1 = Instant::now();
    // the prompt in chunks of positions, with the bits of one step at a time (split where a step's
    // inputs are to be written)
    let cut_at = a.dump_step.filter(|&p| p < prompt.len()).unwrap_or(0);
    let mut logits = if cut_at > 0 {
        s.prefill(&prompt[..cut_at])?
    } else {
        Vec::new()
    };
    if cut_at < prompt.len() {
        dump(&s, prompt[cut_at])?;
        logits = s.prefill(&prompt[cut_at..])?;
    }
    let prefill_s = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let mut stdout = std::io::stdout().lock();
    let out = decode(
        &mut s,
        &tk,
        &sampler,
        &prompt,
        logits,
        &rules,
        |piece, _| {
            if !a.json {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }
            true
        },
        |s, t| dump(s, t).map_err(|e| verity_llm::LlmError::Request(format!("{e:#}"))),
    )?;
    let decode_s = t2.elapsed().as_secs_f64();
    let id = vty::model_id(&step.model);
    let sampling = serde_json::json!({
        "temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p,
        "repetition_penalty": a.repeat_penalty, "seed": a.seed,
        "fixed_point": {"temperature": sampler.temperature_q, "top_p": sampler.top_p_q,
                         "repetition_penalty": sampler.repetition_q},
    });
    if a.json {
        let doc = serde_json::json!({
            "model_id": id,
            "prompt_tokens": prompt,
            "prompt_hash": tokens_hash(&prompt),
            "output_tokens": out.tokens,
            "output_hash": tokens_hash(&out.tokens),
            "input_hash": input_hash(&prompt, &sampler, &rules),
            "steps_root": out.steps_root,
            "text": out.text,
            "finish_reason": out.finish.as_str(),
            "sampling": sampling,
            "timings": {"compile_s": compile_s, "prefill_s": prefill_s, "decode_s": decode_s},
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    writeln!(stdout)?;
    let per = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    eprintln!(
        "model {id}\nprompt {} tokens, hash {}\noutput {} tokens, hash {} ({})\nprefill {:.1} tokens/s, decode {:.1} tokens/s (compiled in {compile_s:.1} s)",
        prompt.len(),
        tokens_hash(&prompt),
        out.tokens.len(),
        tokens_hash(&out.tokens),
        out.finish.as_str(),
        per(prompt.len(), prefill_s),
        per(out.tokens.len().saturating_sub(1), decode_s),
    );
    Ok(())
}
