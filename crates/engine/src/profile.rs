//! Opt-in accounting of where forward time goes (matmuls by weight type, the output
//! projection, attention). Off by default: a disabled timer is one relaxed load. `slm bench`
//! turns it on and prints the split.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use candle_core::quantized::GgmlDType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    MatmulQ4_0,
    MatmulQ4_1,
    MatmulQ4K,
    MatmulQ5K,
    MatmulQ5_0,
    MatmulQ6K,
    MatmulQ8_0,
    MatmulOther,
    /// The final projection to the vocabulary.
    Output,
    Attention,
}

const OPS: [(Op, &str); 10] = [
    (Op::MatmulQ4_0, "matmul Q4_0"),
    (Op::MatmulQ4_1, "matmul Q4_1"),
    (Op::MatmulQ4K, "matmul Q4_K"),
    (Op::MatmulQ5K, "matmul Q5_K"),
    (Op::MatmulQ5_0, "matmul Q5_0"),
    (Op::MatmulQ6K, "matmul Q6_K"),
    (Op::MatmulQ8_0, "matmul Q8_0"),
    (Op::MatmulOther, "matmul other"),
    (Op::Output, "output projection"),
    (Op::Attention, "attention"),
];

static ENABLED: AtomicBool = AtomicBool::new(false);
static NS: [AtomicU64; OPS.len()] = [const { AtomicU64::new(0) }; OPS.len()];

impl Op {
    pub fn for_dtype(d: &GgmlDType) -> Op {
        match d {
            GgmlDType::Q4_0 => Op::MatmulQ4_0,
            GgmlDType::Q4_1 => Op::MatmulQ4_1,
            GgmlDType::Q4K => Op::MatmulQ4K,
            GgmlDType::Q5K => Op::MatmulQ5K,
            GgmlDType::Q5_0 => Op::MatmulQ5_0,
            GgmlDType::Q6K => Op::MatmulQ6K,
            GgmlDType::Q8_0 => Op::MatmulQ8_0,
            _ => Op::MatmulOther,
        }
    }

    fn index(self) -> usize {
        OPS.iter().position(|(o, _)| *o == self).unwrap()
    }
}

pub fn set_enabled(on: bool) {
    ENABLED.store(on, Relaxed);
}

pub fn reset() {
    NS.iter().for_each(|n| n.store(0, Relaxed));
}

/// (name, nanoseconds) of every category.
pub fn snapshot() -> Vec<(&'static str, u64)> {
    OPS.iter().map(|(o, name)| (*name, NS[o.index()].load(Relaxed))).collect()
}

pub struct Timer(Option<(Op, Instant)>);

pub fn timer(op: Op) -> Timer {
    Timer(ENABLED.load(Relaxed).then(|| (op, Instant::now())))
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((op, t)) = self.0 {
            NS[op.index()].fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
        }
    }
}
