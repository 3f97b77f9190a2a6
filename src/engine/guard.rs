//! How an adapter runs one request's engine call from async code.

/// Runs a blocking engine call on this worker and catches a panic in it,
/// returned as its message (logged at error level): without this the
/// request would die with its task and its caller never get a reply.
pub fn call<T, F>(f: F) -> Result<super::error::Result<T>, String>
where
    F: FnOnce() -> super::error::Result<T>,
{
    // block_in_place runs the call on this worker (the runtime moves its
    // other tasks away) instead of handing it to another thread and back,
    // which cost ~160 µs per request in bench/.
    // AssertUnwindSafe: the engine's locks recover from poisoning
    // (engine::lock) and its store writes are transactions, so state seen
    // after a panic is state some request left complete.
    tokio::task::block_in_place(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
        .map_err(|payload| {
            let what = panic_message(payload.as_ref());
            tracing::error!(panic = %what, "a request panicked; answered Internal");
            what
        })
}

/// The text of a panic's payload (`panic!` gives a `&str` or a `String`).
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
