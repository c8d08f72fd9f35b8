//! Sets `--cfg ringbell_async` where the async API is built: with the `tokio` feature, on a
//! backend that has readiness for the runtime, which every backend now has (Windows since
//! step 3 of docs/WINDOWS.md: waits registered with `RegisterWaitForSingleObject`). The
//! code that serves the async API (in `conn/`, `handshake/`, `server.rs`, `codec.rs`,
//! `core/`) is under this one named cfg, so that a backend without readiness can leave it
//! out again by a line here rather than a `cfg` at every such item.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(ringbell_async)");
    println!("cargo::rerun-if-changed=build.rs");
    let tokio = std::env::var_os("CARGO_FEATURE_TOKIO").is_some();
    if tokio {
        println!("cargo::rustc-cfg=ringbell_async");
    }
}
