//! Gated-MLP activations: `act(gate) * up`, elementwise, with `vecmath::exp` so the loops
//! vectorize (built for AVX-512 where the CPU has it: the same bits, lane by lane).

use super::vecmath::exp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (Gemma's `gelu_pytorch_tanh`, ggml's `gelu`).
    GeluTanh,
}

impl Activation {
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Silu => x / (1.0 + exp(-x)),
            Activation::GeluTanh => {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                // tanh(y) = 1 − 2 / (e^{2y} + 1): the error near y = 0 is absolute, ~1 ulp of
                // 1, which is all `1 + tanh` keeps anyway.
                let y = SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x);
                let tanh = 1.0 - 2.0 / (exp(2.0 * y) + 1.0);
                0.5 * x * (1.0 + tanh)
            }
        }
    }
}

/// Exact GELU, `x·Φ(x)` with the error function (BERT's `gelu`, as Hugging Face and candle
/// compute it), evaluated in f64.
pub fn gelu_erf(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))) as f32
}

/// `x[i] = act(x[i])`, in place (ungated MLPs: Phi-2).
pub fn activate(act: Activation, x: &mut [f32]) {
    #[inline(always)]
    fn body(act: Activation, x: &mut [f32]) {
        match act {
            Activation::Silu => x.iter_mut().for_each(|v| *v = Activation::Silu.apply(*v)),
            Activation::GeluTanh => x.iter_mut().for_each(|v| *v = Activation::GeluTanh.apply(*v)),
        }
    }
    /// # Safety
    /// The CPU must have AVX-512 F/BW/DQ/VL.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    unsafe fn wide(act: Activation, x: &mut [f32]) {
        body(act, x)
    }
    #[cfg(target_arch = "x86_64")]
    if super::kernels::detected_level() == super::kernels::Level::Avx512Vnni {
        // SAFETY: `Level::Avx512Vnni` is only reported when the CPU has AVX-512 F/BW/DQ/VL.
        return unsafe { wide(act, x) };
    }
    body(act, x)
}

/// `gate[i] = act(gate[i]) * up[i]`, in place.
pub fn gated(act: Activation, gate: &mut [f32], up: &[f32]) {
    #[inline(always)]
    fn body(act: Activation, gate: &mut [f32], up: &[f32]) {
        match act {
            Activation::Silu => gate.iter_mut().zip(up).for_each(|(g, u)| *g = Activation::Silu.apply(*g) * u),
            Activation::GeluTanh => gate.iter_mut().zip(up).for_each(|(g, u)| *g = Activation::GeluTanh.apply(*g) * u),
        }
    }
    /// # Safety
    /// The CPU must have AVX-512 F/BW/DQ/VL.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    unsafe fn wide(act: Activation, gate: &mut [f32], up: &[f32]) {
        body(act, gate, up)
    }
    #[cfg(target_arch = "x86_64")]
    if super::kernels::detected_level() == super::kernels::Level::Avx512Vnni {
        // SAFETY: `Level::Avx512Vnni` is only reported when the CPU has AVX-512 F/BW/DQ/VL.
        return unsafe { wide(act, gate, up) };
    }
    body(act, gate, up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_match_their_definitions() {
        let mut x = -12.0f32;
        while x < 12.0 {
            let silu = x as f64 / (1.0 + (-x as f64).exp());
            assert!((Activation::Silu.apply(x) as f64 - silu).abs() <= 1e-6 * (1.0 + silu.abs()), "silu({x})");
            let y = 0.797_884_6 * x as f64 * (1.0 + 0.044715 * (x as f64).powi(2));
            let gelu = 0.5 * x as f64 * (1.0 + y.tanh());
            assert!((Activation::GeluTanh.apply(x) as f64 - gelu).abs() <= 1e-6 * (1.0 + gelu.abs()), "gelu({x})");
            x += 0.0371;
        }
        // Far tails stay finite and exact in the limit.
        assert!(Activation::Silu.apply(-200.0).abs() < 1e-30);
        assert_eq!(Activation::Silu.apply(200.0), 200.0);
        assert_eq!(Activation::GeluTanh.apply(200.0), 200.0);
        let mut g = vec![1.0f32; 37];
        gated(Activation::Silu, &mut g, &[2.0; 37]);
        assert!(g.iter().all(|&v| v == 2.0 * Activation::Silu.apply(1.0)));
    }
}
