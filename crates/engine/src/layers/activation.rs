//! Gated-MLP activations: `act(gate) * up`, elementwise, with `vecmath::exp` so the loops
//! vectorize (built for AVX-512 where the CPU has it: the same bits, lane by lane).

use super::vecmath::exp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (Gemma's `gelu_pytorch_tanh`, ggml's `gelu`).
    GeluTanh,
    /// GELU with the error function, `x·Φ(x)` (BERT's `gelu`).
    GeluErf,
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
            Activation::GeluErf => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        }
    }
}

/// The error function, Abramowitz & Stegun 7.1.26 (absolute error under 1.5e-7, about f32's
/// resolution near 1), branch-free and built on `vecmath::exp` so loops over it vectorize.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// `x[i] = act(x[i])`, in place (ungated MLPs: Phi-2).
pub fn activate(act: Activation, x: &mut [f32]) {
    #[inline(always)]
    fn body(act: Activation, x: &mut [f32]) {
        match act {
            Activation::Silu => x.iter_mut().for_each(|v| *v = Activation::Silu.apply(*v)),
            Activation::GeluTanh => x.iter_mut().for_each(|v| *v = Activation::GeluTanh.apply(*v)),
            Activation::GeluErf => x.iter_mut().for_each(|v| *v = Activation::GeluErf.apply(*v)),
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
            Activation::GeluErf => gate.iter_mut().zip(up).for_each(|(g, u)| *g = Activation::GeluErf.apply(*g) * u),
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
            let exact = 0.5 * x as f64 * (1.0 + libm::erf(x as f64 / std::f64::consts::SQRT_2));
            let err = (Activation::GeluErf.apply(x) as f64 - exact).abs();
            assert!(err <= 2e-7 * (1.0 + x.abs() as f64), "gelu_erf({x}): off by {err}");
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
