//! Sets `--cfg ringbell_async` where the async API is built: with the `tokio` feature, on a
//! backend that has readiness for the runtime. Windows has none yet (step 3 of
//! docs/WINDOWS.md: events registered with `RegisterWaitForSingleObject`), so there the
//! `tokio` feature builds only the blocking API, and the code that serves the async one
//! (in `conn/`, `handshake/`, `server.rs`, `codec.rs`, `core/`) is left out with it. One
//! named cfg, rather than `all(feature = "tokio", not(windows))` at every such item.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(ringbell_async)");
    println!("cargo::rerun-if-changed=build.rs");
    let tokio = std::env::var_os("CARGO_FEATURE_TOKIO").is_some();
    if tokio {
        println!("cargo::rustc-cfg=ringbell_async");
    }
}
