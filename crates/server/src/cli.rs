//! Command-line subcommands that talk to the engine without HTTP.

use std::io::Write;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use slm_engine::generate::Generator;
use slm_engine::{Detokenizer, Model, SamplingParams};

#[derive(Parser)]
#[command(name = "slm", version, about = "Local OpenAI-compatible inference server for small language models")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the OpenAI-compatible HTTP API.
    Serve(slm_server::config::ServeFlags),
    /// Download a model: a catalog name (`qwen2.5-coder:1.5b`), a Hugging Face repo with an
    /// optional quant or file (`Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF:Q4_K_M`), or a URL.
    Pull {
        source: String,
        /// Branch, tag or commit of a Hugging Face repo.
        #[arg(long)]
        revision: Option<String>,
        /// Expected sha256 of the file (catalog models and the hub's LFS files carry their own).
        #[arg(long)]
        sha256: Option<String>,
        /// Where a catalog model comes from.
        #[arg(long, value_enum, default_value = "auto")]
        from: slm_server::hub::pull::From,
    },
    /// List the models in the models directory and the Hugging Face cache.
    List,
    /// Remove an installed model (a name from `slm list`).
    Rm { name: String },
    /// Generate text from a prompt; prints only the generated text, streamed.
    Generate {
        #[arg(long)]
        model: String,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long)]
        seed: Option<u64>,
        /// Wrap the prompt as one user message through the model's chat template.
        #[arg(long)]
        chat: bool,
    },
    /// Offline throughput benchmark (not a test): decode tok/s at several concurrencies.
    Bench {
        #[arg(long)]
        model: String,
        /// Concurrent sequences to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,4,8,16,32")]
        concurrency: Vec<usize>,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 128)]
        gen_tokens: usize,
        /// Constrain every sequence to this JSON Schema (inline JSON), to measure the cost of
        /// constrained decoding against a run without it.
        #[arg(long)]
        json_schema: Option<String>,
        /// A benchmark command to run afterwards on the same machine and print side by side,
        /// e.g. "llama-bench -m MODEL.gguf -p 128 -n 128 -t 2" (its ppN/tgN rows are read).
        #[arg(long)]
        compare: Option<String>,
        /// KV-cache element type, as `kv_cache_dtype` in the config.
        #[arg(long, default_value = "f16", value_parser = ["f16", "f32", "q8_0", "q4_0"])]
        kv_cache_dtype: String,
        /// Measure each concurrency without and with speculative decoding (prompt lookup)
        /// and print the speed-up and the acceptance rate.
        #[arg(long)]
        speculative: bool,
        /// Prompts from a workload file (JSONL with `messages`, e.g. tests/workloads/code_edit.jsonl)
        /// instead of a synthetic text; each request ends where the model stops or at --gen-tokens.
        #[arg(long)]
        workload: Option<std::path::PathBuf>,
        /// With --speculative: a draft model (GGUF path) drafting where prompt lookup finds nothing.
        #[arg(long)]
        draft_model: Option<String>,
        /// Measure each concurrency with requests spread over this many distinct random
        /// rank-8 LoRA adapters, comma-separated (0: the base model), e.g. 0,1,4.
        #[arg(long, value_delimiter = ',')]
        lora_counts: Vec<usize>,
    },
    /// Kernel micro-benchmark (not a test): quantized matmul time per call, candle vs slm.
    BenchKernels {
        /// Output features (weight rows).
        #[arg(long, default_value_t = 896)]
        n: usize,
        /// Input features; a multiple of 256 for the K-quants.
        #[arg(long, default_value_t = 4864)]
        k: usize,
        /// Only the table of weights streamed from memory.
        #[arg(long)]
        streaming_only: bool,
        /// Bytes of weight copies the streaming table cycles through (more than the caches).
        #[arg(long, default_value_t = 256)]
        stream_mb: usize,
    },
    /// Print the token ids of TEXT as one JSON array.
    Tokenize {
        #[arg(long)]
        model: String,
        /// Add BOS/EOS as the model does.
        #[arg(long)]
        add_special: bool,
        /// Recognise special-token text such as <|im_start|>.
        #[arg(long)]
        parse_special: bool,
        text: String,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(flags) => {
            let cfg = slm_server::config::resolve(flags)?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(slm_server::serve::serve(cfg))
        }
        Command::Pull { source, revision, sha256, from } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let args = slm_server::hub::pull::PullArgs { source, revision, sha256, from };
            let path = rt.block_on(slm_server::hub::pull::pull(args, &slm_server::config::models_dir()))?;
            println!("{}", path.display());
            Ok(())
        }
        Command::List => list(),
        Command::Rm { name } => {
            let m = slm_server::hub::local::remove(
                &slm_server::config::models_dir(),
                &slm_server::hub::hf_cache::hub_dir(),
                &name,
            )?;
            println!("removed {} ({})", m.name, m.path.display());
            Ok(())
        }
        Command::Generate { model, prompt, max_tokens, temperature, seed, chat } => {
            generate(&model, &prompt, max_tokens, temperature, seed, chat)
        }
        Command::Bench {
            model,
            concurrency,
            prompt_tokens,
            gen_tokens,
            json_schema,
            compare,
            kv_cache_dtype,
            speculative,
            workload,
            draft_model,
            lora_counts,
        } => {
            let json_schema = json_schema
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--json-schema is not JSON: {e}"))?;
            crate::bench::bench(crate::bench::BenchArgs {
                model,
                concurrency,
                prompt_tokens,
                gen_tokens,
                json_schema,
                compare,
                speculative,
                workload,
                draft_model,
                lora_counts,
                kv_dtype: match kv_cache_dtype.as_str() {
                    "f32" => slm_engine::config::KvDtype::F32,
                    "q8_0" => slm_engine::config::KvDtype::Q8_0,
                    "q4_0" => slm_engine::config::KvDtype::Q4_0,
                    _ => slm_engine::config::KvDtype::F16,
                },
            })
        }
        Command::BenchKernels { n, k, streaming_only, stream_mb } => {
            println!(
                "quantized matmul, weight {n} x {k}, kernel level {:?}",
                slm_engine::layers::kernels::detected_level()
            );
            if !streaming_only {
                println!("GF/s per kernel; rowwise = candle's k_quants::matmul (batch-invariant, what slm used before), QMatMul = candle's dispatch (repacked AVX-512 kernels, not batch-invariant)");
                println!(
                    "{:>6} {:>5} {:>14} {:>14} {:>10} {:>10} {:>17}",
                    "type", "rows", "candle rowwise", "candle QMatMul", "slm", "slm ms", "slm vs rowwise"
                );
                for t in slm_engine::layers::kernels::bench::run(n, k)? {
                    let gf = |ms: f64| t.flops / ms / 1e6;
                    let slm = t.slm_ms.unwrap_or(f64::NAN);
                    println!(
                        "{:>6} {:>5} {:>14.1} {:>14.1} {:>10.1} {:>10.3} {:>16.2}x",
                        t.dtype,
                        t.rows,
                        gf(t.candle_rowwise_ms),
                        gf(t.candle_ms),
                        gf(slm),
                        slm,
                        t.candle_rowwise_ms / slm
                    );
                }
            }
            println!("one row, weights streamed from memory (copies of the weight, {stream_mb} MB in all, used in turn as decode does)");
            println!("{:>6} {:>10} {:>10}", "type", "slm ms", "GB/s");
            for t in slm_engine::layers::kernels::bench::run_streaming(n, k, stream_mb)? {
                println!("{:>6} {:>10.3} {:>10.1}", t.dtype, t.ms_per_call, t.gb_per_s);
            }
            Ok(())
        }
        Command::Tokenize { model, add_special, parse_special, text } => {
            let m = Model::load(&model).with_context(|| format!("loading {model}"))?;
            let ids = m.tokenizer.encode(&text, add_special, parse_special)?;
            println!("{}", serde_json::to_string(&ids)?);
            Ok(())
        }
    }
}

fn list() -> Result<()> {
    use slm_server::hub::local::{installed, Location};
    let models = installed(&slm_server::config::models_dir(), &slm_server::hub::hf_cache::hub_dir());
    println!("{:<40} {:>9} {:<8} {:<8} {:>8}  WHERE", "NAME", "SIZE", "QUANT", "ARCH", "CONTEXT");
    for m in models {
        let info = slm_engine::GgufInfo::read(&m.path);
        let (quant, arch, ctx) = match &info {
            Ok(i) => (
                i.quant.clone(),
                i.architecture.clone(),
                i.context_length.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            ),
            Err(_) => ("?".into(), "unreadable".into(), "-".into()),
        };
        let place = match &m.location {
            Location::ModelsDir => m.path.display().to_string(),
            Location::HfCache { repo, file, .. } => format!("hf: {repo}/{file}"),
        };
        println!(
            "{:<40} {:>9} {:<8} {:<8} {:>8}  {place}",
            m.name,
            indicatif::HumanBytes(m.size).to_string(),
            quant,
            arch,
            ctx
        );
    }
    Ok(())
}

fn generate(
    path: &str,
    prompt: &str,
    max_tokens: usize,
    temperature: f32,
    seed: Option<u64>,
    chat: bool,
) -> Result<()> {
    let model = std::sync::Arc::new(Model::load(path).with_context(|| format!("loading {path}"))?);
    let ids = if chat {
        let messages = [serde_json::json!({"role": "user", "content": prompt})];
        let text = model.chat_template.render_prompt(&model.tokenizer, &messages, None)?;
        model.tokenizer.encode(&text, true, true)?
    } else {
        model.tokenizer.encode(prompt, true, false)?
    };
    let max_tokens = max_tokens.min(model.context_length().saturating_sub(ids.len()));
    let mut generator = Generator::new(&model, ids.len() + max_tokens);
    let params = SamplingParams { temperature, seed, ..SamplingParams::default() };
    let mut detok = Detokenizer::new();
    let mut stdout = std::io::stdout().lock();
    generator.generate(&ids, params, max_tokens, |s| {
        if !model.tokenizer.is_end_of_generation(s.token) {
            let piece = detok.push(&model.tokenizer, s.token);
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
        true
    })?;
    let _ = stdout.write_all(detok.flush().as_bytes());
    let _ = writeln!(stdout);
    Ok(())
}
