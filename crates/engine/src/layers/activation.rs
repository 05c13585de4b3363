//! Gated-MLP activations: `act(gate) * up`, elementwise.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (Gemma's `gelu_pytorch_tanh`, ggml's `gelu`).
    GeluTanh,
}

impl Activation {
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::GeluTanh => {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)).tanh())
            }
        }
    }
}

/// `x[i] = act(x[i])`, in place (ungated MLPs: Phi-2).
pub fn activate(act: Activation, x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = act.apply(*v));
}

/// `gate[i] = act(gate[i]) * up[i]`, in place.
pub fn gated(act: Activation, gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = act.apply(*g) * u;
    }
}
