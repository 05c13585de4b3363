//! The building blocks every architecture shares: the quantized linear type, norms, rotary
//! embeddings, the paged attention kernel and activations. All work on row-major `f32` rows and
//! compute each row the same way whatever the number of rows (batch invariance).

pub mod activation;
pub mod attention;
pub mod dense;
pub mod kernels;
pub(crate) mod lanes;
pub mod norm;
pub mod pool;
pub mod qlinear;
pub mod rope;
pub mod vecmath;

pub use qlinear::{QEmbedding, QLinear};
