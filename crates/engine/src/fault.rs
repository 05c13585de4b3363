//! Test-only fault injection: a hook that makes a chosen sequence's sampling panic, so tests
//! can prove that a bug hit while stepping one request fails that request alone (an error in
//! its API's shape) while every other request and the server go on. Nothing sets the hook
//! outside tests; unset, the check is one atomic load per sampled token.

use std::sync::atomic::{AtomicPtr, Ordering};

type Hook = fn(&[u32]) -> bool;

static HOOK: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

/// Makes sampling panic for every sequence whose prompt `hook` picks (`None` clears it).
#[doc(hidden)]
pub fn inject_sampling_panic(hook: Option<Hook>) {
    HOOK.store(hook.map_or(std::ptr::null_mut(), |h| h as *mut ()), Ordering::SeqCst);
}

/// Panics if the hook picks this prompt.
pub(crate) fn check(prompt: &[u32]) {
    let p = HOOK.load(Ordering::Relaxed);
    if p.is_null() {
        return;
    }
    // SAFETY: the only non-null values stored are `Hook` function pointers (above).
    let hook: Hook = unsafe { std::mem::transmute::<*mut (), Hook>(p) };
    if hook(prompt) {
        panic!("injected fault");
    }
}
