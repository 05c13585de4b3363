//! Kernel micro-benchmark (`slm bench-kernels`): time per call and GFLOP/s of candle's
//! quantized matmul and slm's, per weight type, at 1/4/16/64 rows. A benchmark, not a test.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::layers::qlinear::tensor_blocks;
use crate::layers::QLinear;

pub struct KernelTiming {
    pub dtype: &'static str,
    pub rows: usize,
    /// candle's `k_quants::matmul`: one row at a time, the same for any batch (what slm used
    /// before its own kernels).
    pub candle_rowwise_ms: f64,
    /// candle's `QMatMul` (repacked AVX-512 kernels for some types; which kernel runs depends
    /// on the row count, so it is not batch-invariant).
    pub candle_ms: f64,
    pub slm_ms: Option<f64>,
    pub flops: f64,
}

/// Every type slm's kernels take, as the benchmarks name them.
const TYPES: &[(GgmlDType, &str)] = &[
    (GgmlDType::Q4_0, "Q4_0"),
    (GgmlDType::Q4_1, "Q4_1"),
    (GgmlDType::Q5_0, "Q5_0"),
    (GgmlDType::Q5_1, "Q5_1"),
    (GgmlDType::Q8_0, "Q8_0"),
    (GgmlDType::Q2K, "Q2_K"),
    (GgmlDType::Q3K, "Q3_K"),
    (GgmlDType::Q4K, "Q4_K"),
    (GgmlDType::Q5K, "Q5_K"),
    (GgmlDType::Q6K, "Q6_K"),
];

/// The fastest of `iters` calls, in ms: on a small shared machine other processes only
/// ever slow a call down, so the minimum is the repeatable figure.
fn time(mut f: impl FnMut(), iters: usize) -> f64 {
    f();
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// Measures an `n × k` weight of each type (`slm bench-kernels` uses 896 × 4864, the shape of
/// Qwen2.5-0.5B's MLP down projection).
pub fn run(n: usize, k: usize) -> candle_core::Result<Vec<KernelTiming>> {
    let mut out = Vec::new();
    let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
    for &(dtype, name) in TYPES {
        let q = QTensor::quantize(&w, dtype)?;
        let lin = QLinear::new(QTensor::quantize(&w, dtype)?, None, name, "bench").expect("supported type");
        for rows in [1usize, 4, 16, 64] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu)?;
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let iters = (256 / rows).max(16);
            let mm = candle_core::quantized::QMatMul::from_qtensor(QTensor::quantize(&w, dtype)?)?;
            let candle_ms = time(
                || {
                    let _ = candle_core::Module::forward(&mm, &x).unwrap();
                },
                iters,
            );
            let mut dst = vec![0f32; rows * n];
            let candle_rowwise_ms = time(|| rowwise(&q, &xs, rows, k, n, &mut dst), iters);
            let slm_ms = Some(time(
                || {
                    let _ = lin.forward(&xs, rows);
                },
                iters,
            ));
            out.push(KernelTiming {
                dtype: name,
                rows,
                candle_rowwise_ms,
                candle_ms,
                slm_ms,
                flops: 2.0 * (rows * n * k) as f64,
            });
        }
        drop(q);
    }
    Ok(out)
}

fn rowwise(q: &QTensor, x: &[f32], m: usize, k: usize, n: usize, dst: &mut [f32]) {
    use candle_core::quantized::k_quants::{self, *};
    fn run<T: GgmlType + crate::layers::qlinear::GgufBlock>(
        q: &QTensor,
        x: &[f32],
        m: usize,
        k: usize,
        n: usize,
        dst: &mut [f32],
    ) {
        k_quants::matmul::<T>((m, k, n), x, tensor_blocks::<T>(q), dst).unwrap();
    }
    match q.dtype() {
        GgmlDType::Q4_0 => run::<BlockQ4_0>(q, x, m, k, n, dst),
        GgmlDType::Q4_1 => run::<BlockQ4_1>(q, x, m, k, n, dst),
        GgmlDType::Q5_0 => run::<BlockQ5_0>(q, x, m, k, n, dst),
        GgmlDType::Q5_1 => run::<BlockQ5_1>(q, x, m, k, n, dst),
        GgmlDType::Q2K => run::<BlockQ2K>(q, x, m, k, n, dst),
        GgmlDType::Q3K => run::<BlockQ3K>(q, x, m, k, n, dst),
        GgmlDType::Q4K => run::<BlockQ4K>(q, x, m, k, n, dst),
        GgmlDType::Q5K => run::<BlockQ5K>(q, x, m, k, n, dst),
        GgmlDType::Q6K => run::<BlockQ6K>(q, x, m, k, n, dst),
        _ => run::<BlockQ8_0>(q, x, m, k, n, dst),
    }
}

/// One weight type streamed from memory: `copies` packed copies of an `n × k` weight (more
/// bytes than any cache holds), multiplied in turn by one row, as a decode step does.
pub struct StreamTiming {
    pub dtype: &'static str,
    pub ms_per_call: f64,
    /// Packed weight bytes read per second.
    pub gb_per_s: f64,
}

/// Decode's access pattern: every call reads a weight that is not in cache.
pub fn run_streaming(n: usize, k: usize, total_mb: usize) -> candle_core::Result<Vec<StreamTiming>> {
    use super::{
        BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0,
        PackedWeights, WeightBlock,
    };
    fn packs<W: WeightBlock + crate::layers::qlinear::GgufBlock>(
        q: &QTensor,
        n: usize,
        k: usize,
        total_mb: usize,
    ) -> Vec<PackedWeights> {
        let blocks = tensor_blocks::<W>(q);
        let first = PackedWeights::pack(blocks, n, k);
        let copies = (total_mb << 20).div_ceil(first.num_bytes()).max(2);
        std::iter::once(first).chain((1..copies).map(|_| PackedWeights::pack(blocks, n, k))).collect()
    }
    let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
    let x: Vec<f32> = Tensor::randn(0f32, 1.0, (1, k), &Device::Cpu)?.flatten_all()?.to_vec1()?;
    let mut out = Vec::new();
    for &(dtype, name) in TYPES {
        let q = QTensor::quantize(&w, dtype)?;
        let ws = match dtype {
            GgmlDType::Q4_0 => packs::<BlockQ4_0>(&q, n, k, total_mb),
            GgmlDType::Q4_1 => packs::<BlockQ4_1>(&q, n, k, total_mb),
            GgmlDType::Q5_0 => packs::<BlockQ5_0>(&q, n, k, total_mb),
            GgmlDType::Q5_1 => packs::<BlockQ5_1>(&q, n, k, total_mb),
            GgmlDType::Q2K => packs::<BlockQ2K>(&q, n, k, total_mb),
            GgmlDType::Q3K => packs::<BlockQ3K>(&q, n, k, total_mb),
            GgmlDType::Q4K => packs::<BlockQ4K>(&q, n, k, total_mb),
            GgmlDType::Q5K => packs::<BlockQ5K>(&q, n, k, total_mb),
            GgmlDType::Q6K => packs::<BlockQ6K>(&q, n, k, total_mb),
            _ => packs::<BlockQ8_0>(&q, n, k, total_mb),
        };
        let mut y = vec![0f32; n];
        let ms = time(|| ws.iter().for_each(|p| super::matmul(p, &x, 1, &mut y)), 10) / ws.len() as f64;
        out.push(StreamTiming { dtype: name, ms_per_call: ms, gb_per_s: ws[0].num_bytes() as f64 / ms / 1e6 });
    }
    Ok(out)
}
