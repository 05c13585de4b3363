//! Kernel micro-benchmark (`slm bench-kernels`): time per call and GFLOP/s of candle's
//! quantized matmul and slm's, per weight type, at 1/4/16/64 rows. A benchmark, not a test.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::layers::QLinear;

pub struct KernelTiming {
    pub dtype: &'static str,
    pub rows: usize,
    pub candle_ms: f64,
    pub slm_ms: Option<f64>,
    pub flops: f64,
}

fn time(mut f: impl FnMut(), iters: usize) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_secs_f64() * 1e3 / iters as f64
}

/// Measures an `n × k` weight of each type (`slm bench-kernels` uses 896 × 4864, the shape of
/// Qwen2.5-0.5B's MLP down projection).
pub fn run(n: usize, k: usize) -> candle_core::Result<Vec<KernelTiming>> {
    let mut out = Vec::new();
    let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
    for (dtype, name) in [(GgmlDType::Q4K, "Q4_K"), (GgmlDType::Q5_0, "Q5_0"), (GgmlDType::Q6K, "Q6_K"), (GgmlDType::Q8_0, "Q8_0")] {
        let q = QTensor::quantize(&w, dtype.clone())?;
        let lin = QLinear::new(QTensor::quantize(&w, dtype.clone())?, None, name, "bench").expect("supported type");
        for rows in [1usize, 4, 16, 64] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu)?;
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let iters = (64 / rows).max(4);
            let mm = candle_core::quantized::QMatMul::from_qtensor(QTensor::quantize(&w, dtype.clone())?)?;
            let candle_ms = time(|| { let _ = candle_core::Module::forward(&mm, &x).unwrap(); }, iters);
            let slm_ms = Some(time(|| { let _ = lin.forward(&xs, rows); }, iters));
            out.push(KernelTiming { dtype: name, rows, candle_ms, slm_ms, flops: 2.0 * (rows * n * k) as f64 });
        }
        drop(q);
    }
    Ok(out)
}
