//! LoRA adapters on tiny random models this test writes itself (tiny_gguf, F32 weights), for
//! each block layout slm runs (separate Q/K/V and gated MLP; fused Q/K/V and fused gate/up;
//! Phi-2's ungated MLP with biases; Gemma's tied output). The reference is the same model
//! with the adapter merged into its weights, `W + scale · alpha/rank · B·A`, written as a
//! second file: slm's logits with the adapter match the merged model's at every position,
//! and a row's logits are bit-identical alone, beside other adapters and beside base rows.
//! Through the engine: tokens and logprob bits do not change with batching, prompt chunking
//! or the prefix cache, and a prefix cached under one adapter is never served to another.

mod tiny_gguf;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use slm_engine::batch::BatchInput;
use slm_engine::block_manager::BlockManager;
use slm_engine::{EngineConfig, EngineHandle, Event, LoraAdapter, LoraSet, Model, Request, SamplingParams};
use tiny_gguf::Arch;

const BS: usize = 16;
const RANK: usize = 8;
const ALPHA: f32 = 16.0;
const TOLERANCE: f32 = 1e-4;

/// One adapted matrix: its base tensor name and the adapter's A (`rank × in`) and B (`out ×
/// rank`), row-major.
struct Pair {
    base: String,
    a: Vec<f32>,
    b: Vec<f32>,
    in_dim: usize,
    out_dim: usize,
}

fn dims(t: &QTensor) -> (usize, usize) {
    let d = t.shape().dims();
    (d[0], d[1])
}

/// A random adapter for every 2-D weight of `model_path` except the embedding table (and
/// for the output projection, tied or not).
fn random_pairs(model_path: &Path, seed: u64) -> Vec<Pair> {
    let mut f = File::open(model_path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut names: Vec<_> = ct.tensor_infos.keys().cloned().collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pairs = Vec::new();
    for name in names {
        let info = &ct.tensor_infos[&name];
        let d = info.shape.dims();
        let base = match name.as_str() {
            "token_embd.weight" if !ct.tensor_infos.contains_key("output.weight") => "output.weight".to_string(),
            n if d.len() == 2 && n.starts_with("blk.") || n == "output.weight" => name.clone(),
            _ => continue,
        };
        let (out_dim, in_dim) = (d[0], d[1]);
        let ua = (3.0 / in_dim as f32).sqrt();
        let ub = (0.75 / RANK as f32).sqrt();
        let a = (0..RANK * in_dim).map(|_| rng.random_range(-ua..=ua)).collect();
        let b = (0..out_dim * RANK).map(|_| rng.random_range(-ub..=ub)).collect();
        pairs.push(Pair { base, a, b, in_dim, out_dim });
    }
    pairs
}

fn qt(v: &[f32], dims: &[usize], dtype: GgmlDType) -> QTensor {
    QTensor::quantize(&Tensor::from_vec(v.to_vec(), dims, &Device::Cpu).unwrap(), dtype).unwrap()
}

fn write_adapter(path: &Path, arch: Arch, pairs: &[Pair], extra: &[(&str, Value)]) {
    write_adapter_as(path, arch, pairs, extra, GgmlDType::F16);
}

/// `write_adapter` with A in `a_dtype`.
fn write_adapter_as(path: &Path, arch: Arch, pairs: &[Pair], extra: &[(&str, Value)], a_dtype: GgmlDType) {
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.name().into())),
        ("general.type".into(), Value::String("adapter".into())),
        ("adapter.type".into(), Value::String("lora".into())),
        ("adapter.lora.alpha".into(), Value::F32(ALPHA)),
    ];
    for (k, v) in extra {
        md.retain(|(mk, _)| mk != k);
        md.push((k.to_string(), v.clone()));
    }
    let mut tensors = Vec::new();
    for p in pairs {
        // F16 for A, F32 for B: both element types llama.cpp's converter writes.
        tensors.push((format!("{}.lora_a", p.base), qt(&p.a, &[RANK, p.in_dim], a_dtype)));
        tensors.push((format!("{}.lora_b", p.base), qt(&p.b, &[p.out_dim, RANK], GgmlDType::F32)));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(&mut File::create(path).unwrap(), &md_refs, &t_refs).unwrap();
}

/// The base model with `scale ·` each adapter merged in (A as the F16 file rounds it).
fn write_merged(arch: Arch, dir: &Path, adapters: &[(&[Pair], f32)]) -> PathBuf {
    tiny_gguf::write_with(arch, dir, false, |_, tensors| {
        for (pairs, scale) in adapters {
            for p in pairs.iter() {
                let a16: Vec<f32> = p.a.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
                let source = if p.base == "output.weight" && !tensors.iter().any(|(n, _)| n == "output.weight") {
                    "token_embd.weight"
                } else {
                    p.base.as_str()
                };
                let t = &tensors.iter().find(|(n, _)| n == source).unwrap().1;
                assert_eq!(dims(t), (p.out_dim, p.in_dim));
                let mut w = t.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let s = scale * ALPHA / RANK as f32;
                for o in 0..p.out_dim {
                    for i in 0..p.in_dim {
                        let ba: f64 = (0..RANK).map(|r| p.b[o * RANK + r] as f64 * a16[r * p.in_dim + i] as f64).sum();
                        w[o * p.in_dim + i] += s * ba as f32;
                    }
                }
                let merged = qt(&w, &[p.out_dim, p.in_dim], GgmlDType::F32);
                tensors.retain(|(n, _)| n != &p.base);
                tensors.push((p.base.clone(), merged));
            }
        }
    })
}

/// Prefill logits at every position of each prompt, all prompts in one step, each with its
/// adapters.
fn prefill(model: &Model, prompts: &[(Vec<u32>, Option<Arc<LoraSet>>)]) -> Vec<Vec<Vec<f32>>> {
    let vocab = model.decoder.config.vocab_size;
    let mut blocks = BlockManager::with_prefix_caching(64, BS, false);
    let mut kv = model.new_kv_cache_of(64, BS, slm_engine::config::KvDtype::F32);
    let mut b = BatchInput::default();
    for (p, lora) in prompts {
        let table = blocks.try_allocate(p, p.len()).unwrap().blocks().to_vec();
        b.push_seq(p, 0, &table, BS, false);
        b.set_last_lora(lora.clone());
    }
    b.logits_rows = (0..b.num_rows()).collect();
    let l = model.decoder.forward(&b, &mut kv);
    let mut out = Vec::new();
    let mut row = 0;
    for (p, _) in prompts {
        out.push((0..p.len()).map(|i| l[(row + i) * vocab..(row + i + 1) * vocab].to_vec()).collect());
        row += p.len();
    }
    out
}

fn max_rel_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
            x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale
        })
        .fold(0f32, f32::max)
}

fn temp_dir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("slm-lora-{}-{what}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn check_arch(arch: Arch) {
    let dir = temp_dir(arch.name());
    let base_path = tiny_gguf::write(arch, &dir, false);
    let base = Model::load(&base_path).unwrap();
    let (p1, p2) = (random_pairs(&base_path, 1), random_pairs(&base_path, 2));
    // Adapter 2 adapts only the attention, to mix adapters of different coverage.
    let p2: Vec<Pair> = p2.into_iter().filter(|p| p.base.contains("attn")).collect();
    let (f1, f2) = (dir.join("a1.gguf"), dir.join("a2.gguf"));
    write_adapter(&f1, arch, &p1, &[]);
    write_adapter(&f2, arch, &p2, &[]);
    let a1 = Arc::new(LoraAdapter::load(f1.to_str().unwrap(), "one", &base.decoder).unwrap());
    let a2 = Arc::new(LoraAdapter::load(f2.to_str().unwrap(), "two", &base.decoder).unwrap());
    assert_eq!(a1.num_pairs(), p1.len());

    let (merged_dir, merged2_dir) =
        (temp_dir(&format!("{}-m1", arch.name())), temp_dir(&format!("{}-m12", arch.name())));
    let m1 = Model::load(write_merged(arch, &merged_dir, &[(&p1, 0.5)])).unwrap();
    let m12 = Model::load(write_merged(arch, &merged2_dir, &[(&p1, 0.5), (&p2, -1.25)])).unwrap();

    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let n_vocab = tiny_gguf::vocab_size() as u32;
    let prompt: Vec<u32> = (0..21).map(|_| rng.random_range(0..n_vocab - 3)).collect();
    let other: Vec<u32> = (0..9).map(|_| rng.random_range(0..n_vocab - 3)).collect();
    let set1 = LoraSet::new(vec![(a1.clone(), 0.5)]);
    // Listed in the other order: a set applies its adapters in id order whatever the order given.
    let set12 = LoraSet::new(vec![(a2.clone(), -1.25), (a1.clone(), 0.5)]);

    let with1 = prefill(&base, &[(prompt.clone(), set1.clone())]).remove(0);
    let with12 = prefill(&base, &[(prompt.clone(), set12.clone())]).remove(0);
    let plain = prefill(&base, &[(prompt.clone(), None)]).remove(0);
    let merged1 = prefill(&m1, &[(prompt.clone(), None)]).remove(0);
    let merged12 = prefill(&m12, &[(prompt.clone(), None)]).remove(0);
    let (d1, d12) = (max_rel_diff(&with1, &merged1), max_rel_diff(&with12, &merged12));
    assert!(d1 <= TOLERANCE, "{arch:?}: adapter vs merged weights: max |Δ| / scale {d1}");
    assert!(d12 <= TOLERANCE, "{arch:?}: two adapters vs merged weights: max |Δ| / scale {d12}");
    let effect = max_rel_diff(&with1, &plain);
    assert!(effect > 0.01, "{arch:?}: the adapter should change the logits (by {effect})");

    // Beside other adapters and base rows, in one step: the same bits.
    let mixed = prefill(
        &base,
        &[
            (other.clone(), set12.clone()),
            (prompt.clone(), set1.clone()),
            (other.clone(), None),
            (prompt.clone(), None),
        ],
    );
    assert!(mixed[1] == with1, "{arch:?}: adapter row changed beside other adapters and base rows");
    assert!(mixed[3] == plain, "{arch:?}: base row changed beside adapter rows");
    assert!(mixed[0] == prefill(&base, &[(other.clone(), set12.clone())])[0], "{arch:?}: two-adapter row changed");
    println!(
        "{}: adapter vs merged {d1:.1e}, two adapters vs merged {d12:.1e}, adapter effect {effect:.2}",
        arch.name()
    );
    for d in [dir, merged_dir, merged2_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn llama_adapter_equals_merged_weights_and_is_batch_invariant() {
    check_arch(Arch::Llama);
}

#[test]
fn fused_projection_adapters_phi3() {
    check_arch(Arch::Phi3);
}

#[test]
fn ungated_mlp_with_biases_phi2() {
    check_arch(Arch::Phi2);
}

#[test]
fn tied_output_projection_gemma_and_gemma2() {
    check_arch(Arch::Gemma);
    check_arch(Arch::Gemma2);
}

/// Q8_0 adapter tensors (what the converter writes with `--outtype q8_0`) read as their values:
/// the same logits, bit for bit, as an F32 file holding the dequantized values.
#[test]
fn q8_0_adapter_tensors_read_as_their_values() {
    let dir = temp_dir("q8");
    let base_path = tiny_gguf::write(Arch::Llama, &dir, false);
    let base = Model::load(&base_path).unwrap();
    let mut pairs = random_pairs(&base_path, 4);
    let (q8, f32_file) = (dir.join("q8.gguf"), dir.join("f32.gguf"));
    write_adapter_as(&q8, Arch::Llama, &pairs, &[], GgmlDType::Q8_0);
    for p in &mut pairs {
        let t = qt(&p.a, &[RANK, p.in_dim], GgmlDType::Q8_0);
        p.a = t.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    }
    write_adapter_as(&f32_file, Arch::Llama, &pairs, &[], GgmlDType::F32);
    let load = |f: &Path| {
        LoraSet::new(vec![(Arc::new(LoraAdapter::load(f.to_str().unwrap(), "q", &base.decoder).unwrap()), 1.0)])
    };
    let prompt: Vec<u32> = (0..13).map(|i| i * 17 % 250).collect();
    let a = prefill(&base, &[(prompt.clone(), load(&q8))]);
    let b = prefill(&base, &[(prompt.clone(), load(&f32_file))]);
    assert!(a == b, "a Q8_0 adapter should read as its dequantized values");
    assert!(a != prefill(&base, &[(prompt, None)]), "and still adapt the model");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn mismatched_adapters_are_refused_naming_the_tensor() {
    let dir = temp_dir("bad");
    let base_path = tiny_gguf::write(Arch::Llama, &dir, false);
    let base = Model::load(&base_path).unwrap();
    let pairs = random_pairs(&base_path, 3);
    let load = |pairs: &[Pair], extra: &[(&str, Value)]| {
        let f = dir.join("bad.gguf");
        write_adapter(&f, Arch::Llama, pairs, extra);
        LoraAdapter::load(f.to_str().unwrap(), "bad", &base.decoder).err().expect("refused").to_string()
    };
    let e = load(&pairs, &[("general.architecture", Value::String("qwen2".into()))]);
    assert!(e.contains("architecture `qwen2`") && e.contains("`llama`"), "{e}");
    let e = load(&pairs, &[("general.type", Value::String("model".into()))]);
    assert!(e.contains("not an adapter"), "{e}");
    let e = load(&pairs, &[("adapter.type", Value::String("control_vector".into()))]);
    assert!(e.contains("adapter.type"), "{e}");
    // A tensor the base model does not have.
    let mut wrong = random_pairs(&base_path, 3);
    wrong[0].base = "blk.99.attn_q.weight".into();
    let e = load(&wrong, &[]);
    assert!(e.contains("blk.99.attn_q.weight"), "{e}");
    // Wrong shape: A's input width of another matrix.
    let mut wrong = random_pairs(&base_path, 3);
    let i = wrong.iter().position(|p| p.base == "blk.0.ffn_down.weight").unwrap();
    let j = wrong.iter().position(|p| p.base == "blk.0.attn_q.weight").unwrap();
    wrong[i].a = wrong[j].a.clone();
    wrong[i].in_dim = wrong[j].in_dim;
    let e = load(&wrong, &[]);
    assert!(e.contains("blk.0.ffn_down.weight.lora_a") && e.contains("shape"), "{e}");
    // Only half a pair.
    let f = dir.join("half.gguf");
    let p = &pairs[0];
    let a = qt(&p.a, &[RANK, p.in_dim], GgmlDType::F32);
    let md = [
        ("general.architecture", Value::String("llama".into())),
        ("general.type", Value::String("adapter".into())),
        ("adapter.type", Value::String("lora".into())),
    ];
    let name = format!("{}.lora_a", p.base);
    gguf_file::write(
        &mut File::create(&f).unwrap(),
        &md.iter().map(|(k, v)| (*k, v)).collect::<Vec<_>>(),
        &[(name.as_str(), &a)],
    )
    .unwrap();
    let e = LoraAdapter::load(f.to_str().unwrap(), "half", &base.decoder).err().unwrap().to_string();
    assert!(e.contains(&format!("{}.lora_b", p.base)) && e.contains("missing"), "{e}");
    // Not a GGUF at all.
    std::fs::write(&f, b"not a gguf").unwrap();
    let e = LoraAdapter::load(f.to_str().unwrap(), "junk", &base.decoder).err().unwrap().to_string();
    assert!(e.contains("adapter file") && e.contains("half.gguf"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Tokens and the bits of each token's logprob and top logprobs.
fn run(e: &EngineHandle, reqs: &[Request]) -> Vec<(Vec<u32>, Vec<u32>, usize)> {
    let streams: Vec<_> = reqs.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    streams
        .into_iter()
        .map(|mut s| {
            let (mut toks, mut bits) = (vec![], vec![]);
            loop {
                match s.blocking_next().expect("stream ends with Finished") {
                    Event::Token(t) => {
                        toks.push(t.token);
                        bits.push(t.logprob.to_bits());
                        bits.extend(t.top_logprobs.iter().map(|x| x.1.to_bits()));
                    }
                    Event::Finished(f) => return (toks, bits, f.num_cached_tokens),
                    Event::Error(e) => panic!("{e}"),
                    Event::Progress(_) => {}
                }
            }
        })
        .collect()
}

#[test]
fn engine_batches_mixed_adapters_exactly_and_keys_the_prefix_cache_by_adapter() {
    let dir = temp_dir("engine");
    let base_path = tiny_gguf::write(Arch::Llama, &dir, false);
    let model = Arc::new(Model::load(&base_path).unwrap());
    let adapters: Vec<Arc<LoraAdapter>> = (0..3)
        .map(|i| {
            let f = dir.join(format!("e{i}.gguf"));
            write_adapter(&f, Arch::Llama, &random_pairs(&base_path, 10 + i), &[]);
            Arc::new(LoraAdapter::load(f.to_str().unwrap(), &format!("e{i}"), &model.decoder).unwrap())
        })
        .collect();
    let sets: Vec<Option<Arc<LoraSet>>> = vec![
        None,
        LoraSet::new(vec![(adapters[0].clone(), 1.0)]),
        LoraSet::new(vec![(adapters[1].clone(), 0.7)]),
        LoraSet::new(vec![(adapters[2].clone(), 1.0), (adapters[0].clone(), 0.3)]),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let n_vocab = tiny_gguf::vocab_size() as u32;
    // One shared 40-token prefix (two full 16-token blocks) and a distinct tail per request.
    let prefix: Vec<u32> = (0..40).map(|_| rng.random_range(0..n_vocab - 3)).collect();
    let reqs: Vec<Request> = (0..16)
        .map(|i| {
            let mut prompt = prefix.clone();
            prompt.extend((0..3 + i % 5).map(|_| rng.random_range(0..n_vocab - 3)));
            let params = SamplingParams { top_logprobs: 2, ..SamplingParams::greedy() };
            let mut r = Request::new(prompt, params, 12);
            r.ignore_eos = true;
            r.lora = sets[i % sets.len()].clone();
            r
        })
        .collect();
    let plain = EngineConfig { prefix_caching: false, ..Default::default() };
    let e = EngineHandle::start(model.clone(), plain.clone()).unwrap();
    let alone: Vec<_> = reqs.iter().map(|r| run(&e, std::slice::from_ref(r)).remove(0)).collect();
    let toks = |v: &[(Vec<u32>, Vec<u32>, usize)]| v.iter().map(|x| (x.0.clone(), x.1.clone())).collect::<Vec<_>>();
    assert_ne!(alone[0].0, alone[1].0, "an adapter should change the greedy tokens of a tiny random model");
    assert_eq!(toks(&run(&e, &reqs)), toks(&alone), "16 at once, four adapter sets");
    drop(e);

    let chunked = EngineHandle::start(model.clone(), EngineConfig { max_batched_tokens: 7, ..plain.clone() }).unwrap();
    assert_eq!(toks(&run(&chunked, &reqs)), toks(&alone), "prompts chunked by a 7-token budget");
    drop(chunked);

    let cached = EngineHandle::start(model, EngineConfig { block_size: 16, ..Default::default() }).unwrap();
    // The base model caches the shared prefix; the first request of each adapter set finds
    // nothing of it (other keys and values), later ones find their own set's blocks.
    let first = run(&cached, &reqs[..4]);
    assert_eq!(toks(&first), toks(&alone[..4]));
    let base_again = run(&cached, &reqs[4..5]).remove(0);
    assert!(base_again.2 >= 32, "the base model's cached prefix: {} tokens", base_again.2);
    let second = run(&cached, &reqs[4..8]);
    assert_eq!(toks(&second), toks(&alone[4..8]), "with prefix-cache hits under adapters");
    for (i, s) in second.iter().enumerate().skip(1) {
        assert!(s.2 >= 32, "request {} (adapter set {}) should hit its own set's blocks: {}", i + 4, i, s.2);
    }
    // A set never seen with this prefix (scale differs): no hit, same output as alone.
    let mut fresh = reqs[1].clone();
    fresh.lora = LoraSet::new(vec![(adapters[0].clone(), 0.999)]);
    let got = run(&cached, std::slice::from_ref(&fresh)).remove(0);
    assert_eq!(got.2, 0, "blocks cached under another scale must not be served");
    let _ = std::fs::remove_dir_all(dir);
}
