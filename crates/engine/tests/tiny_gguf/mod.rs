//! Writes tiny random models as GGUF files, with the metadata keys and tensor names llama.cpp's
//! converter writes for each architecture, weights quantized to the types the real models use
//! (Q4_K, Q5_0, Q6_K, Q8_0, Q4_0; F32 norms) and a small byte-level BPE vocabulary with merges
//! and control tokens. The architecture parity tests load them into slm and into an
//! independent implementation (candle-transformers) and compare logits.

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen3,
    Phi2,
    Phi3,
    Gemma,
    Gemma2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen3 => "qwen3",
            Arch::Phi2 => "phi2",
            Arch::Phi3 => "phi3",
            Arch::Gemma => "gemma",
            Arch::Gemma2 => "gemma2",
        }
    }
}

/// Shapes of every tiny model: the K-quants need rows that are multiples of 256.
pub struct Shape {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub ffn: usize,
}

pub const SHAPE: Shape = Shape { hidden: 256, heads: 4, kv_heads: 2, head_dim: 64, layers: 3, ffn: 512 };

/// The vocabulary: the 256 byte tokens of byte-level BPE, a few merges, then control tokens.
pub fn vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let byte_char = byte_to_unicode();
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char[b as usize].to_string()).collect();
    let mut types = vec![1i32; 256];
    let merges: Vec<String> = vec!["t h".into(), "th e".into(), "Ġ the".into(), "i n".into()];
    for m in &merges {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    for s in ["<s>", "</s>", "<|im_end|>"] {
        tokens.push(s.into());
        types.push(3);
    }
    (tokens, types, merges)
}

pub fn vocab_size() -> usize {
    vocab().0.len()
}

/// GPT-2's byte-to-character table.
fn byte_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

struct Writer {
    rng: ChaCha8Rng,
    tensors: Vec<(String, QTensor)>,
}

impl Writer {
    /// A weight of `out × inp` values, uniform with variance 1/inp (unit-scale activations).
    fn weight(&mut self, name: &str, out: usize, inp: usize, dtype: GgmlDType) {
        let a = (3.0 / inp as f32).sqrt();
        self.random(name, &[out, inp], a, 0.0, dtype);
    }

    fn random(&mut self, name: &str, dims: &[usize], a: f32, center: f32, dtype: GgmlDType) {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| center + self.rng.random_range(-a..=a)).collect();
        let t = Tensor::from_vec(v, dims, &Device::Cpu).unwrap();
        self.tensors.push((name.to_string(), QTensor::quantize(&t, dtype).unwrap()));
    }

    /// A norm weight near 1 (near 0 where the file stores `w` for a `1 + w` norm).
    fn norm(&mut self, name: &str, n: usize, center: f32) {
        self.random(name, &[n], 0.1, center, GgmlDType::F32);
    }
}

fn u32v(v: usize) -> Value {
    Value::U32(v as u32)
}

/// Writes a tiny random `arch` model to `dir` and returns its path. Deterministic per arch.
/// `quantized`: the linear weights in the quant types real models use (else F32, where an
/// implementation's arithmetic is exact enough to compare tightly).
pub fn write(arch: Arch, dir: &Path, quantized: bool) -> PathBuf {
    write_with(arch, dir, quantized, |_, _| {})
}

/// Like `write`, letting `edit` change the metadata and tensors first (broken files).
pub fn write_with(
    arch: Arch,
    dir: &Path,
    quantized: bool,
    edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<(String, QTensor)>),
) -> PathBuf {
    use GgmlDType::*;
    let s = &SHAPE;
    let name = arch.name();
    let (tokens, types, merges) = vocab();
    let n_vocab = tokens.len();
    let mut w = Writer { rng: ChaCha8Rng::seed_from_u64(arch as u64 + 1), tensors: Vec::new() };
    let kv_heads = if arch == Arch::Phi2 { s.heads } else { s.kv_heads };
    let (q_dim, kv_dim) = (s.heads * s.head_dim, kv_heads * s.head_dim);
    let k = |key: &str| format!("{name}.{key}");
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(name.into())),
        ("general.name".into(), Value::String(format!("tiny-random-{name}"))),
        (k("context_length"), u32v(512)),
        (k("embedding_length"), u32v(s.hidden)),
        (k("block_count"), u32v(s.layers)),
        (k("feed_forward_length"), u32v(s.ffn)),
        (k("attention.head_count"), u32v(s.heads)),
        (k("attention.head_count_kv"), u32v(kv_heads)),
        (k("rope.freq_base"), Value::F32(10_000.0)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.iter().map(|t| Value::String(t.clone())).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(types.iter().map(|&t| Value::I32(t)).collect())),
        ("tokenizer.ggml.merges".into(), Value::Array(merges.iter().map(|m| Value::String(m.clone())).collect())),
        ("tokenizer.ggml.bos_token_id".into(), u32v(n_vocab - 3)),
        ("tokenizer.ggml.eos_token_id".into(), u32v(n_vocab - 2)),
    ];
    match arch {
        Arch::Phi2 => {
            md.push((k("attention.layer_norm_epsilon"), Value::F32(1e-5)));
            md.push((k("rope.dimension_count"), u32v(s.head_dim / 2)));
        }
        _ => {
            md.push((k("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)));
            md.push((k("rope.dimension_count"), u32v(s.head_dim)));
            md.push((k("attention.key_length"), u32v(s.head_dim)));
            md.push((k("attention.value_length"), u32v(s.head_dim)));
        }
    }
    if arch == Arch::Qwen3 {
        // candle's quantized_qwen3 builds its rope tables in f16 unless told f32 (its own key).
        md.push(("general.dtype".into(), u32v(0)));
    }
    if arch == Arch::Gemma2 {
        // Longer than the test sequences: candle's gemma2 (the reference) windows every layer
        // and only in prefill, where llama.cpp and slm window every other layer; beyond the
        // window they cannot agree.
        md.push((k("attention.sliding_window"), u32v(4096)));
        md.push((k("attn_logit_softcapping"), Value::F32(50.0)));
        md.push((k("final_logit_softcapping"), Value::F32(30.0)));
    }
    let gemma = matches!(arch, Arch::Gemma | Arch::Gemma2);
    // GGUF Gemma norms hold 1 + w already; the tests' references read them as such.
    let norm_center = 1.0;

    w.random("token_embd.weight", &[n_vocab, s.hidden], 1.0, 0.0, if quantized { Q8_0 } else { F32 });
    w.norm("output_norm.weight", s.hidden, norm_center);
    if arch == Arch::Phi2 {
        w.random("output_norm.bias", &[s.hidden], 0.1, 0.0, F32);
    }
    if !gemma {
        w.weight("output.weight", n_vocab, s.hidden, if quantized { Q6K } else { F32 });
        if arch == Arch::Phi2 {
            w.random("output.bias", &[n_vocab], 0.1, 0.0, F32);
        }
    }
    // Quant types rotate over layers so every kernel meets every role.
    let types = [Q4K, Q5_0, Q8_0, Q6K, Q4_0];
    let ty = |l: usize, i: usize| if quantized { types[(l + i) % types.len()] } else { F32 };
    for l in 0..s.layers {
        let b = |t: &str| format!("blk.{l}.{t}");
        w.norm(&b("attn_norm.weight"), s.hidden, norm_center);
        match arch {
            Arch::Phi3 => {
                w.weight(&b("attn_qkv.weight"), q_dim + 2 * kv_dim, s.hidden, ty(l, 0));
                w.weight(&b("ffn_up.weight"), 2 * s.ffn, s.hidden, ty(l, 1));
            }
            Arch::Phi2 => {
                w.random(&b("attn_norm.bias"), &[s.hidden], 0.1, 0.0, F32);
                w.weight(&b("attn_qkv.weight"), q_dim + 2 * kv_dim, s.hidden, ty(l, 0));
                w.random(&b("attn_qkv.bias"), &[q_dim + 2 * kv_dim], 0.1, 0.0, F32);
                w.weight(&b("ffn_up.weight"), s.ffn, s.hidden, ty(l, 1));
                w.random(&b("ffn_up.bias"), &[s.ffn], 0.1, 0.0, F32);
            }
            _ => {
                w.weight(&b("attn_q.weight"), q_dim, s.hidden, ty(l, 0));
                w.weight(&b("attn_k.weight"), kv_dim, s.hidden, ty(l, 1));
                w.weight(&b("attn_v.weight"), kv_dim, s.hidden, ty(l, 2));
                w.weight(&b("ffn_gate.weight"), s.ffn, s.hidden, ty(l, 3));
                w.weight(&b("ffn_up.weight"), s.ffn, s.hidden, ty(l, 4));
            }
        }
        w.weight(&b("attn_output.weight"), s.hidden, q_dim, ty(l, 2));
        w.weight(&b("ffn_down.weight"), s.hidden, s.ffn, ty(l, 3));
        if arch == Arch::Phi2 {
            w.random(&b("attn_output.bias"), &[s.hidden], 0.1, 0.0, F32);
            w.random(&b("ffn_down.bias"), &[s.hidden], 0.1, 0.0, F32);
        } else {
            w.norm(&b("ffn_norm.weight"), s.hidden, norm_center);
        }
        if arch == Arch::Qwen3 {
            w.norm(&b("attn_q_norm.weight"), s.head_dim, norm_center);
            w.norm(&b("attn_k_norm.weight"), s.head_dim, norm_center);
        }
        if arch == Arch::Gemma2 {
            w.norm(&b("post_attention_norm.weight"), s.hidden, norm_center);
            w.norm(&b("post_ffw_norm.weight"), s.hidden, norm_center);
        }
    }
    edit(&mut md, &mut w.tensors);
    let path = dir.join(format!("tiny-{name}{}.gguf", if quantized { "-q" } else { "" }));
    let mut f = File::create(&path).unwrap();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = w.tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
    path
}
