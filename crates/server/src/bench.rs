//! `slm bench`: offline throughput of the engine on a model — aggregate and per-sequence
//! decode tok/s at several concurrencies, prefill tok/s, and where step time goes — and,
//! with `--compare CMD`, a side-by-side with another engine's benchmark run right after on
//! the same machine (llama.cpp's `llama-bench` output is read; anything else is printed).
//! `--speculative` measures every concurrency twice, without and with speculative decoding
//! (per request, on one engine), and prints the ratio and the acceptance rate;
//! `--workload FILE` takes its prompts from a workload file (tests/workloads/*.jsonl, chat
//! messages through the model's template; each ends where the model stops). `--lora-counts
//! 0,1,4` measures every concurrency with requests spread over that many distinct seeded
//! rank-8 adapters (on every projection; 0 = the base model) and prints each run's aggregate
//! tok/s against the first. A benchmark, not a test: it prints figures, it asserts nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use slm_engine::lora_writer::{write_random_adapter, RandomAdapter};
use slm_engine::{
    profile, ConstraintSpec, EngineConfig, EngineHandle, Event, Grammar, LoraAdapter, LoraSet, Model, Request,
    SamplingParams, StatsSnapshot,
};

pub struct BenchArgs {
    pub model: String,
    pub concurrency: Vec<usize>,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// Constrain every sequence to this JSON Schema (to measure what masks cost).
    pub json_schema: Option<serde_json::Value>,
    /// A shell command to run afterwards and put side by side (e.g. `llama-bench -m … -t 2`).
    pub compare: Option<String>,
    pub kv_dtype: slm_engine::config::KvDtype,
    /// Measure each concurrency with speculation off and on.
    pub speculative: bool,
    /// Prompts from this workload file instead of a synthetic text.
    pub workload: Option<std::path::PathBuf>,
    /// A draft model for the speculative runs.
    pub draft_model: Option<String>,
    /// Runs with requests spread over this many distinct LoRA adapters each (0: none).
    pub lora_counts: Vec<usize>,
}

/// One benchmark prompt and how many tokens it may generate.
#[derive(Clone)]
struct Prompt {
    tokens: Vec<u32>,
    max_tokens: usize,
}

/// A workload file's requests (JSONL, `messages` and `max_tokens` per line) as prompts.
fn workload_prompts(model: &Model, path: &std::path::Path, gen: usize) -> Result<Vec<Prompt>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let messages = v["messages"].as_array().ok_or_else(|| anyhow::anyhow!("a line without messages"))?;
        let rendered = model.chat_template.render_prompt(&model.tokenizer, messages, None)?;
        let tokens = model.tokenizer.encode(&rendered, true, true)?;
        let max_tokens = v["max_tokens"].as_u64().map_or(gen, |m| (m as usize).min(gen));
        out.push(Prompt { tokens, max_tokens });
    }
    if out.is_empty() {
        bail!("{}: no requests", path.display());
    }
    Ok(out)
}

/// Distinct prompts of exactly `n` tokens: a long text tokenized once, cut at different offsets.
fn prompts(model: &Model, count: usize, n: usize, gen: usize) -> Vec<Prompt> {
    let text = "Small language models run on edge devices, laptops and single-board computers. \
        They answer questions, summarise documents, write code and call tools. Quantization \
        shrinks their weights to four or five bits, and careful kernels keep them fast. ";
    let base = model.tokenizer.encode(&text.repeat(64), false, false).unwrap_or_default();
    (0..count).map(|i| Prompt { tokens: base[i * 7..i * 7 + n].to_vec(), max_tokens: gen }).collect()
}

struct RunResult {
    wall: Duration,
    /// Tokens streamed (a constrained sequence may end before `gen`).
    num_tokens: usize,
    per_seq_decode_tps: f64,
    stats: StatsSnapshot,
}

/// How a run's requests are made.
#[derive(Clone, Copy)]
struct RunMode {
    /// Generate exactly `max_tokens` (synthetic prompts) or stop where the model does.
    ignore_eos: bool,
    speculative: bool,
}

/// Request `i` runs with `loras[i % len]` (none when `loras` is empty).
fn run(
    engine: &EngineHandle,
    prompts: &[Prompt],
    gen: Option<usize>,
    schema: Option<&serde_json::Value>,
    mode: RunMode,
    loras: &[Arc<LoraSet>],
) -> Result<RunResult> {
    // Compiled once, as the server does, and outside the timed region.
    let constraint = schema
        .map(|s| engine.model().grammar.compile(&ConstraintSpec::new(Grammar::JsonSchema(s.clone()))))
        .transpose()?;
    let before = engine.stats();
    let start = Instant::now();
    let streams: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut r = Request::new(p.tokens.clone(), SamplingParams::greedy(), gen.unwrap_or(p.max_tokens));
            r.lora = (!loras.is_empty()).then(|| loras[i % loras.len()].clone());
            r.ignore_eos = mode.ignore_eos;
            r.speculative = mode.speculative;
            r.constraint = constraint.clone();
            engine.submit(r)
        })
        .collect::<std::result::Result<_, _>>()?;
    // Each stream is drained on its own thread so the timestamps are taken as tokens arrive.
    let handles: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || -> Result<(Instant, Instant, usize)> {
                let mut first = None;
                let mut n = 0;
                while let Some(e) = s.blocking_next() {
                    match e {
                        Event::Token(_) => {
                            n += 1;
                            first.get_or_insert_with(Instant::now);
                        }
                        Event::Finished(_) => return Ok((first.unwrap_or_else(Instant::now), Instant::now(), n)),
                        Event::Error(e) => bail!("request failed: {e}"),
                        Event::Progress(_) => {}
                    }
                }
                bail!("stream ended early")
            })
        })
        .collect();
    let mut tps = Vec::new();
    let mut num_tokens = 0;
    for h in handles {
        let (first, last, n) = h.join().map_err(|_| anyhow::anyhow!("bench thread panicked"))??;
        num_tokens += n;
        let decode = (last - first).as_secs_f64();
        if n > 1 && decode > 0.0 {
            tps.push((n - 1) as f64 / decode);
        }
    }
    let wall = start.elapsed();
    let after = engine.stats();
    let stats = StatsSnapshot {
        steps_total: after.steps_total - before.steps_total,
        step_tokens_total: after.step_tokens_total - before.step_tokens_total,
        step_seqs_total: after.step_seqs_total - before.step_seqs_total,
        schedule_ns: after.schedule_ns - before.schedule_ns,
        forward_ns: after.forward_ns - before.forward_ns,
        sample_ns: after.sample_ns - before.sample_ns,
        postprocess_ns: after.postprocess_ns - before.postprocess_ns,
        spec_draft_tokens_total: after.spec_draft_tokens_total - before.spec_draft_tokens_total,
        spec_accepted_tokens_total: after.spec_accepted_tokens_total - before.spec_accepted_tokens_total,
        spec_model_draft_tokens_total: after.spec_model_draft_tokens_total - before.spec_model_draft_tokens_total,
        spec_model_accepted_tokens_total: after.spec_model_accepted_tokens_total
            - before.spec_model_accepted_tokens_total,
        ..after
    };
    Ok(RunResult { wall, num_tokens, per_seq_decode_tps: tps.iter().sum::<f64>() / tps.len().max(1) as f64, stats })
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let model = Arc::new(Model::load(&args.model)?);
    let max_c = args.concurrency.iter().copied().max().unwrap_or(1);
    let config = EngineConfig {
        prefix_caching: false,
        max_seqs: max_c.max(1),
        kv_dtype: args.kv_dtype,
        ..EngineConfig::default()
    };
    let draft = args.draft_model.as_ref().map(|p| Model::load(p).map(Arc::new)).transpose()?;
    let engine = EngineHandle::start_with_draft(model.clone(), draft, config.clone())?;
    let synthetic = prompts(&model, max_c + 1, args.prompt_tokens, args.gen_tokens);
    let work = args.workload.as_deref().map(|p| workload_prompts(&model, p, args.gen_tokens)).transpose()?;
    // `c` streams: the workload's prompts in turn (repeated to fill them), else synthetic ones.
    let streams = |c: usize| match &work {
        Some(w) => (0..c).map(|i| w[i % w.len()].clone()).collect::<Vec<_>>(),
        None => synthetic[..c].to_vec(),
    };
    let plain = RunMode { ignore_eos: work.is_none(), speculative: false };
    let adapters = random_adapters(&model, args.lora_counts.iter().copied().max().unwrap_or(0))?;
    // (name, mode, adapters): the first is what the others are compared with.
    let modes: Vec<(String, RunMode, &[Arc<LoraSet>])> = if !args.lora_counts.is_empty() {
        args.lora_counts.iter().map(|&k| (format!("lora{k}"), plain, &adapters[..k])).collect()
    } else if args.speculative {
        vec![("plain".into(), plain, &[][..]), ("spec".into(), RunMode { speculative: true, ..plain }, &[][..])]
    } else {
        vec![("plain".into(), plain, &[][..])]
    };
    let all = &synthetic;
    println!(
        "slm bench: {} ({} threads, kernel level {:?}, {:?} KV cache), prompts of {} tokens, {} generated tokens each, max_batched_tokens {}",
        args.model,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        slm_engine::layers::kernels::detected_level(),
        config.kv_dtype,
        args.prompt_tokens,
        args.gen_tokens,
        config.max_batched_tokens
    );
    if let Some(s) = &args.json_schema {
        model.grammar.warm_up();
        println!("every sequence constrained to the JSON Schema {s}");
    }
    if let (Some(p), Some(w)) = (&args.workload, &work) {
        println!("prompts from {} ({} requests, at most {} tokens each)", p.display(), w.len(), args.gen_tokens);
    }

    // Warm-up, then prefill alone: one prompt, one generated token.
    run(&engine, &all[max_c..], Some(2), None, plain, &[])?;
    let r = run(&engine, &all[..1], Some(1), None, plain, &[])?;
    let prefill_tps = args.prompt_tokens as f64 / (r.stats.forward_ns as f64 / 1e9);
    println!(
        "prefill: {:.1} tok/s ({} tokens in {:.1} ms of forward time)\n",
        prefill_tps,
        args.prompt_tokens,
        r.stats.forward_ns as f64 / 1e6
    );

    println!(
        "{:>5} {:>6} {:>12} {:>12} {:>10} {:>9} {:>10} {:>10} {:>10} {:>11} {:>8} {:>8}",
        "seqs",
        "mode",
        "agg tok/s",
        "seq tok/s",
        "wall s",
        "steps",
        "rows/step",
        "forward%",
        "sample%",
        "sched+post%",
        "accept",
        "x plain"
    );
    let mut breakdown = Vec::new();
    let mut results = Vec::new();
    for &c in &args.concurrency {
        let (mut plain_tps, mut plain_agg) = (None, None);
        for (name, mode, loras) in &modes {
            profile::reset();
            profile::set_enabled(true);
            let gen = work.is_none().then_some(args.gen_tokens);
            let r = run(&engine, &streams(c), gen, args.json_schema.as_ref(), *mode, loras)?;
            profile::set_enabled(false);
            let s = &r.stats;
            let step_ns = (s.schedule_ns + s.forward_ns + s.sample_ns + s.postprocess_ns) as f64;
            let pct = |x: u64| 100.0 * x as f64 / step_ns;
            let accept = if s.spec_draft_tokens_total > 0 {
                format!("{:.2}", s.spec_accepted_tokens_total as f64 / s.spec_draft_tokens_total as f64)
            } else {
                "-".into()
            };
            if s.spec_model_draft_tokens_total > 0 {
                let (d, a) = (s.spec_model_draft_tokens_total, s.spec_model_accepted_tokens_total);
                let (ld, la) = (s.spec_draft_tokens_total - d, s.spec_accepted_tokens_total - a);
                println!("      drafts: prompt lookup {la}/{ld} accepted, draft model {a}/{d} accepted");
            }
            let agg = r.num_tokens as f64 / r.wall.as_secs_f64();
            // Speculation is about one stream's speed; adapters about the whole batch's.
            let ratio = match (plain_tps, plain_agg) {
                (Some(p), Some(a)) => {
                    format!("{:.2}", if args.lora_counts.is_empty() { r.per_seq_decode_tps / p } else { agg / a })
                }
                _ => "-".into(),
            };
            println!(
                "{:>5} {:>6} {:>12.1} {:>12.1} {:>10.2} {:>9} {:>10.1} {:>9.1}% {:>9.2}% {:>10.2}% {:>8} {:>8}",
                c,
                name,
                agg,
                r.per_seq_decode_tps,
                r.wall.as_secs_f64(),
                s.steps_total,
                s.step_tokens_total as f64 / s.steps_total.max(1) as f64,
                pct(s.forward_ns),
                pct(s.sample_ns),
                pct(s.schedule_ns + s.postprocess_ns),
                accept,
                ratio,
            );
            if plain_tps.is_none() {
                plain_tps = Some(r.per_seq_decode_tps);
                plain_agg = Some(agg);
                breakdown.push((c, s.forward_ns, profile::snapshot()));
                results.push((c, r.per_seq_decode_tps));
            }
        }
    }
    let single = results.iter().find(|(c, _)| *c == 1).map(|(_, tps)| *tps);
    println!("\nforward time split (share of forward time; categories this model never used left out):");
    print!("{:>5}", "seqs");
    let used: Vec<bool> =
        (0..breakdown[0].2.len()).map(|i| breakdown.iter().any(|(_, _, parts)| parts[i].1 > 0)).collect();
    for ((name, _), _) in breakdown[0].2.iter().zip(&used).filter(|(_, u)| **u) {
        print!(" {:>14}", name);
    }
    println!(" {:>14}", "rest");
    for (c, fwd, parts) in &breakdown {
        print!("{:>5}", c);
        let sum: u64 = parts.iter().map(|(_, ns)| ns).sum();
        for ((_, ns), _) in parts.iter().zip(&used).filter(|(_, u)| **u) {
            print!(" {:>13.1}%", 100.0 * *ns as f64 / *fwd as f64);
        }
        println!(" {:>13.1}%", 100.0 * fwd.saturating_sub(sum) as f64 / *fwd as f64);
    }
    if let Some(cmd) = &args.compare {
        drop(engine);
        side_by_side(cmd, args.prompt_tokens, prefill_tps, args.gen_tokens, single)?;
    }
    Ok(())
}

/// `n` distinct seeded rank-8 adapters for `model` (on every projection), each at scale 1.
fn random_adapters(model: &Model, n: usize) -> Result<Vec<Arc<LoraSet>>> {
    let dir = std::env::temp_dir().join(format!("slm-bench-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut out = Vec::new();
    for i in 0..n {
        let path = dir.join(format!("a{i}.gguf"));
        let spec = RandomAdapter { seed: i as u64, b_range: 0.02, ..Default::default() };
        write_random_adapter(&model.decoder, &path, &spec)?;
        let a = LoraAdapter::load(&path.display().to_string(), &format!("a{i}"), &model.decoder)?;
        out.extend(LoraSet::new(vec![(Arc::new(a), 1.0)]));
    }
    let _ = std::fs::remove_dir_all(&dir);
    if n > 0 {
        println!("{n} random rank-8 LoRA adapters on every projection (lora_writer)");
    }
    Ok(out)
}

/// Runs `cmd` and prints its prefill (`ppN`) and decode (`tgN`) rates beside slm's.
fn side_by_side(
    cmd: &str,
    prompt_tokens: usize,
    prefill_tps: f64,
    gen_tokens: usize,
    decode_tps: Option<f64>,
) -> Result<()> {
    println!("\nrunning: {cmd}");
    let out = std::process::Command::new("sh").arg("-c").arg(cmd).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("the compared command failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    let theirs = llama_bench_rates(&text);
    if theirs.is_empty() {
        println!("(no llama-bench rows found; its output follows)\n{text}");
        return Ok(());
    }
    println!("\n{:>8} {:>12} {:>12} {:>10}", "test", "slm tok/s", "other tok/s", "slm/other");
    for (test, other) in theirs {
        let ours = match (test.get(..2), test[2..].parse::<usize>()) {
            (Some("pp"), Ok(n)) if n == prompt_tokens => Some(prefill_tps),
            (Some("tg"), Ok(n)) if n == gen_tokens => decode_tps,
            _ => None,
        };
        match ours {
            Some(o) => println!("{test:>8} {o:>12.1} {other:>12.1} {:>9.2}x", o / other),
            None => println!("{test:>8} {:>12} {other:>12.1} {:>10}", "-", "-"),
        }
    }
    Ok(())
}

/// `(test, tok/s)` from llama-bench's markdown table: rows whose `test` cell is `ppN` or
/// `tgN`, rate from the last cell (`303.40 ± 2.10`).
fn llama_bench_rates(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('|'))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
            let test = cells
                .iter()
                .find(|c| (c.starts_with("pp") || c.starts_with("tg")) && c[2..].parse::<usize>().is_ok())?;
            let rate = cells.last()?.split_whitespace().next()?.parse::<f64>().ok()?;
            Some((test.to_string(), rate))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_llama_bench_tables() {
        let out = "| model | size | params | backend | threads | test | t/s |\n| --- | ---: | ---: | --- | ---: | ---: | ---: |\n| qwen2 1B Q4_K - Medium | 462.96 MiB | 630.17 M | CPU | 2 | pp128 | 303.40 ± 2.10 |\n| qwen2 1B Q4_K - Medium | 462.96 MiB | 630.17 M | CPU | 2 | tg128 | 57.41 ± 0.30 |\n\nbuild: abc (1)\n";
        assert_eq!(super::llama_bench_rates(out), vec![("pp128".to_string(), 303.4), ("tg128".to_string(), 57.41)]);
    }
}
