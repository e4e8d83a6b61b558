//! Compiling an uploaded ONNX file under a budget. A stranger's file can describe any amount of work, and
//! part of it (the ONNX front-end's analysis) cannot be interrupted from inside, so the compilation runs in
//! a child process — this same `verity` binary's `model compile` — with an address-space limit
//! (`limits.max_compile_bytes`), a time limit (`timeouts.compile_secs`) and the graph-size bound
//! (`limits.max_compile_elements`, checked before anything is evaluated). The child is killed when its
//! request ends for any reason (timeout, client gone, node stopping). Where the node does not run as the
//! `verity` binary (embedded in another program), it compiles in-process on an inference worker with the
//! same time limit and cooperative cancellation, without the memory limit.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use verity_engine::ir::Model;
use verity_engine::vty;

use crate::error::ApiError;
use crate::state::Node;

/// Compile options sent with an ONNX upload (the `options` part).
#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct PublishOptions {
    #[serde(default)]
    scale_bits: Option<i8>,
    #[serde(default)]
    samples: Option<usize>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    input_ranges: Vec<String>,
    #[serde(default)]
    input_shapes: Vec<String>,
    #[serde(default)]
    precision: Option<String>,
    #[serde(default)]
    outputs: Vec<String>,
}

impl PublishOptions {
    /// Parse and check the options part (400 on anything malformed).
    pub fn parse(bytes: Option<&[u8]>) -> Result<PublishOptions, ApiError> {
        let o: PublishOptions = match bytes {
            Some(b) => serde_json::from_slice(b)
                .map_err(|e| ApiError::bad_request("bad_options", format!("options: {e}")))?,
            None => PublishOptions::default(),
        };
        o.compile_options()?;
        Ok(o)
    }

    /// The compiler options these give.
    fn compile_options(&self) -> Result<verity_compiler::CompileOptions, ApiError> {
        let mut co = verity_compiler::CompileOptions::default();
        if let Some(b) = self.scale_bits {
            co.scale_bits = b;
        }
        if let Some(p) = &self.precision {
            co.precision = p
                .parse()
                .map_err(|e: String| ApiError::bad_request("bad_options", e))?;
        }
        if let Some(s) = self.samples {
            if s == 0 || s > 1024 {
                return Err(ApiError::bad_request(
                    "bad_options",
                    "samples must be 1..=1024",
                ));
            }
            co.random_samples = s;
        }
        if let Some(s) = self.seed {
            co.seed = s;
        }
        co.apply_input_specs(&self.input_ranges, &self.input_shapes)
            .map_err(|e| ApiError::bad_request("bad_options", e))?;
        co.keep_outputs(&self.outputs);
        Ok(co)
    }

    /// The same options as `verity model compile` flags.
    fn flags(&self) -> Vec<String> {
        let co = verity_compiler::CompileOptions::default();
        let mut f = vec![
            format!("--scale-bits={}", self.scale_bits.unwrap_or(co.scale_bits)),
            format!("--samples={}", self.samples.unwrap_or(co.random_samples)),
            format!("--seed={}", self.seed.unwrap_or(co.seed)),
        ];
        if let Some(p) = &self.precision {
            f.push(format!("--precision={p}"));
        }
        f.extend(
            self.input_ranges
                .iter()
                .map(|r| format!("--input-range={r}")),
        );
        f.extend(
            self.input_shapes
                .iter()
                .map(|s| format!("--input-shape={s}")),
        );
        if !self.outputs.is_empty() {
            f.push(format!("--outputs={}", self.outputs.join(",")));
        }
        f
    }
}

fn failed(msg: impl Into<String>) -> ApiError {
    ApiError::unprocessable("compile_failed", msg)
}

fn timed_out(secs: u64) -> ApiError {
    ApiError::unprocessable(
        "compile_timeout",
        format!("the compilation did not finish within {secs} s (timeouts.compile_secs)"),
    )
}

/// Compile the ONNX file at `onnx` with `opts` under the node's budgets: the model and the compile
/// report.
pub async fn compile_onnx(
    node: &Arc<Node>,
    onnx: &Path,
    opts: &PublishOptions,
) -> Result<(Model, Option<Value>), ApiError> {
    let exe = std::env::current_exe().ok().filter(|p| {
        p.file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|s| s == "verity")
    });
    match exe {
        Some(exe) => in_child(node, &exe, onnx, opts).await,
        None => in_process(node, onnx, opts).await,
    }
}

async fn in_child(
    node: &Arc<Node>,
    exe: &Path,
    onnx: &Path,
    opts: &PublishOptions,
) -> Result<(Model, Option<Value>), ApiError> {
    let limits = &node.config.limits;
    let secs = node.config.timeouts.compile_secs;
    let out = onnx.with_extension("vty");
    let report = onnx.with_extension("report.json");
    let _cleanup = Remove(vec![out.clone(), report.clone()]);
    let mut child = compiler(exe, onnx, &out, &report, limits, opts)
        .spawn()
        .map_err(|e| ApiError::internal(format!("cannot start the compiler: {e}")))?;
    let stderr = child.stderr.take();
    let read_stderr = async move {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        if let Some(s) = stderr {
            let _ = s.take(1 << 20).read_to_end(&mut buf).await;
        }
        buf
    };
    let run = async { tokio::join!(child.wait(), read_stderr) };
    let (status, stderr) = match tokio::time::timeout(Duration::from_secs(secs), run).await {
        Ok((status, stderr)) => (
            status.map_err(|e| ApiError::internal(format!("the compiler failed to run: {e}")))?,
            stderr,
        ),
        Err(_) => {
            // killed and reaped before the answer goes out (dropping the child would only signal it)
            let _ = child.kill().await;
            return Err(timed_out(secs));
        }
    };
    if !status.success() {
        return Err(child_failed(
            onnx,
            &String::from_utf8_lossy(&stderr),
            status.code().is_none(),
            limits.max_compile_bytes,
        ));
    }
    let bytes = tokio::fs::read(&out)
        .await
        .map_err(|e| ApiError::internal(format!("the compiler wrote no model: {e}")))?;
    let rep = tokio::fs::read(&report)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let model = node
        .on_worker(false, move || vty::decode(&bytes).map(|(m, _)| m))
        .await?
        .map_err(|e| ApiError::internal(format!("the compiler wrote an invalid model: {e}")))?;
    Ok((model, rep))
}

/// `verity model compile` of `onnx` into `out` (with its report), quiet, its address space capped at
/// the node's compile budget.
fn compiler(
    exe: &Path,
    onnx: &Path,
    out: &Path,
    report: &Path,
    limits: &crate::config::Limits,
    opts: &PublishOptions,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("model")
        .arg("compile")
        .arg(onnx)
        .arg("-o")
        .arg(out)
        .arg("--report")
        .arg(report)
        .arg(format!("--max-elements={}", limits.max_compile_elements))
        .args(opts.flags())
        .env("VERITY_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    {
        let bytes = limits.max_compile_bytes as libc::rlim_t;
        // SAFETY: only async-signal-safe calls (setrlimit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// Why a compiler child failed, from its last stderr line (without the upload's temporary path): over
/// the memory budget when it says so or died by a signal (`killed`), else the compiler's sentence.
fn child_failed(onnx: &Path, stderr: &str, killed: bool, budget: u64) -> ApiError {
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let msg = last.strip_prefix("error: ").unwrap_or(last);
    let ours = format!("cannot compile {}: ", onnx.display());
    let cause = msg.strip_prefix(&ours).unwrap_or(msg);
    let memory = [
        "memory allocation",
        "failed to allocate",
        "capacity overflow",
    ]
    .iter()
    .any(|m| stderr.contains(m));
    if memory || killed {
        failed(format!(
            "the compilation exceeded this node's memory budget of {budget} bytes \
             (limits.max_compile_bytes){}",
            if cause.is_empty() {
                String::new()
            } else {
                format!(": {cause}")
            }
        ))
    } else {
        failed(format!("cannot compile: {cause}"))
    }
}

async fn in_process(
    node: &Arc<Node>,
    onnx: &Path,
    opts: &PublishOptions,
) -> Result<(Model, Option<Value>), ApiError> {
    let secs = node.config.timeouts.compile_secs;
    let mut co = opts.compile_options()?;
    co.max_elements = Some(node.config.limits.max_compile_elements);
    let path = onnx.to_path_buf();
    // on a worker: cancelled when the time limit drops this future, or when the node stops
    let job = node.on_worker(false, move || verity_compiler::compile_path(&path, &co));
    let (model, rep) = tokio::time::timeout(Duration::from_secs(secs), job)
        .await
        .map_err(|_| timed_out(secs))??
        .map_err(|e| match e {
            verity_compiler::CompileError::Cancelled => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cancelled",
                "the compilation was stopped",
            ),
            e => failed(format!("cannot compile: {e}")),
        })?;
    Ok((model, serde_json::to_value(&rep).ok()))
}

/// Files removed when dropped.
pub struct Remove(pub Vec<std::path::PathBuf>);
impl Drop for Remove {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
