//! libdqlite.so.0 over dqlite-rs: the node API of C dqlite's `dqlite.h`
//! (1.11, plus a few later functions), so programs linked against C
//! dqlite — go-dqlite applications such as `dqlite-demo` — run on
//! dqlite-rs with `LD_LIBRARY_PATH` pointing at this library.
//!
//! Layout:
//! - `ffi.rs`: the exported C functions; all the unsafe code, with its
//!   invariants.
//! - `handle.rs`: what a `dqlite_node *` is: settings, the running
//!   [`dqlite_node::Node`] on its own tokio runtime, the error message.
//! - `connect.rs`: the application's connect function as the node's dial
//!   function.
//!
//! Logs go nowhere unless `LIBDQLITE_TRACE` is set (as in C dqlite); then
//! they go to stderr, filtered by `RUST_LOG` (default `info`).
#![deny(missing_docs)]
#![deny(unsafe_code)]

mod connect;
#[allow(unsafe_code)]
mod ffi;
mod handle;
mod trace;
