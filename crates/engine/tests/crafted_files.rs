//! Crafted model files: a valid tiny GGUF, then its bytes broken one way at a time —
//! truncated, wrong magic or version, absurd tensor/metadata counts and string lengths,
//! tensor dims that overflow, offsets past the end, unknown tensor types — and chat templates
//! that loop or explode. Each load returns a clear error naming the file, quickly, with no
//! panic inside the loader (the error is the loader's own, not the panic catch-all).

#[allow(dead_code)] // shared with the architecture tests, which use all of it
mod tiny_gguf;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::Value;
use slm_engine::Model;
use tiny_gguf::Arch;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("slm-crafted-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Loads `path` and returns the error's text; fails the test on success, a panic inside the
/// loader, or a slow refusal.
fn refused(name: &str, path: &Path) -> String {
    let t = Instant::now();
    let err = match Model::load(path) {
        Ok(_) => panic!("{name}: the broken file loaded"),
        Err(e) => e.to_string(),
    };
    assert!(t.elapsed() < Duration::from_secs(10), "{name}: took {:?}", t.elapsed());
    assert!(err.contains(&path.display().to_string()), "{name}: the error does not name the file: {err}");
    assert!(!err.contains("could not be loaded"), "{name}: the loader panicked: {err}");
    eprintln!("{name:<28} {err}");
    err
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Where the info of tensor `name` starts: right after its name bytes (n_dims: u32, then
/// n_dims u64 dims, type: u32, offset: u64).
fn tensor_info_at(b: &[u8], name: &str) -> usize {
    let needle = [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
    let i = b.windows(needle.len()).position(|w| w == needle).expect("tensor name in the header");
    i + needle.len()
}

#[test]
fn broken_files_are_refused_with_a_clear_error() {
    let d = dir();
    let good = tiny_gguf::write(Arch::Llama, &d, true);
    Model::load(&good).expect("the unbroken file loads");
    let bytes = std::fs::read(&good).unwrap();
    let q = tensor_info_at(&bytes, "blk.0.attn_q.weight");
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("empty", Box::new(|b| b.clear())),
        ("truncated in the magic", Box::new(|b| b.truncate(3))),
        ("truncated in the header", Box::new(|b| b.truncate(100))),
        ("truncated in the tensors", Box::new(|b| b.truncate(b.len() / 2))),
        ("wrong magic", Box::new(|b| b[..4].copy_from_slice(b"GGML"))),
        ("unknown version", Box::new(|b| put_u32(b, 4, 99))),
        ("absurd tensor count", Box::new(|b| put_u64(b, 8, u64::MAX))),
        ("absurd metadata count", Box::new(|b| put_u64(b, 16, u64::MAX / 2))),
        ("absurd key length", Box::new(|b| put_u64(b, 24, 1 << 60))),
        ("absurd dims count", Box::new(move |b| put_u32(b, q, 1 << 30))),
        (
            "dims that overflow",
            Box::new(move |b| {
                put_u64(b, q + 4, 1 << 40);
                put_u64(b, q + 12, 1 << 40);
            }),
        ),
        ("dims past the data", Box::new(move |b| put_u64(b, q + 4, 1 << 20))),
        ("unknown tensor type", Box::new(move |b| put_u32(b, q + 20, 99))),
        ("offset past the end", Box::new(move |b| put_u64(b, q + 24, 1 << 50))),
    ];
    let mut failures = Vec::new();
    for (i, (name, edit)) in cases.iter().enumerate() {
        let mut b = bytes.clone();
        edit(&mut b);
        let path = d.join(format!("broken-{i}.gguf"));
        std::fs::write(&path, &b).unwrap();
        if let Err(p) = std::panic::catch_unwind(|| refused(name, &path)) {
            failures.push(p.downcast_ref::<String>().cloned().unwrap_or_default());
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases.len(), failures.join("\n"));
    refused("missing file", &d.join("nope.gguf"));
}

#[test]
fn templates_that_loop_or_explode_are_refused_at_load() {
    let d = dir();
    for (i, template) in [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{{ 'xxxxxxxx' * 1000 }}{% endfor %}",
    ]
    .into_iter()
    .enumerate()
    {
        let sub = d.join(format!("template-{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        let path = tiny_gguf::write_with(Arch::Llama, &sub, false, |md, _| {
            md.push(("tokenizer.chat_template".into(), Value::String(template.into())));
        });
        let err = refused(template, &path);
        assert!(err.contains("bounds"), "{err}");
    }
}
