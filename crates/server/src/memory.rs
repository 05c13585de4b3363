//! Giving memory back to the system when a model unloads. glibc's malloc keeps freed memory
//! for reuse: after its dynamic mmap threshold has grown (it does when large blocks are
//! freed), a model's tensors come from the heap, and an unloaded model's pages stay in the
//! process. `slm serve` pins the threshold at 1 MiB (allocations that large are their own
//! mappings, unmapped when freed; `SLM_MMAP_THRESHOLD_KB` overrides it) and, once an unloaded
//! model's last handle is gone, trims the heap. Measured on the 1.5B: 18–55 MiB left after an
//! unload at 1 MiB, 133–220 MiB at 32 MiB (glibc's ceiling), 898 MiB untuned. Other allocators and systems: no-ops. Called by `serve.rs` and `registry.rs`.

use std::sync::Weak;
use std::time::{Duration, Instant};

/// At start: big allocations bypass the heap.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before the engines
    // start, and glibc serializes it with allocations anyway.
    unsafe {
        let kb = std::env::var("SLM_MMAP_THRESHOLD_KB").ok().and_then(|v| v.parse::<i32>().ok()).unwrap_or(1024);
        libc::mallopt(libc::M_MMAP_THRESHOLD, kb.clamp(128, 32 << 10) << 10);
    }
}

/// Returns freed heap pages to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Waits (on its own thread) until `model` is freed — its engine thread ends after the
/// requests still in it — then trims.
pub fn trim_after_drop<T: Send + Sync + 'static>(model: Weak<T>) {
    let _ = std::thread::Builder::new().name("slm-trim".into()).spawn(move || {
        let t = Instant::now();
        while model.strong_count() > 0 && t.elapsed() < Duration::from_secs(600) {
            std::thread::sleep(Duration::from_millis(50));
        }
        trim();
    });
}
