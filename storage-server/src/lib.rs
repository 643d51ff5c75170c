//! The camvault server as a library: the gRPC services over storage-core, the MP4 export
//! writer and the H.264/H.265 parsing they need. The `camvault` binary is a thin front end over
//! it; benchmarks and tests drive the same code.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::unwrap_used)]

// The generated gRPC code names its codec `::camvault_server::codec::ProtoCodec`, a path that
// works both here and in tests that include the generated code themselves.
extern crate self as camvault_server;

pub mod codec;
pub mod config;
pub mod conn;
pub mod digest;
#[doc(hidden)]
pub mod fuzz;
pub mod h26x;
pub mod ingest;
pub mod metrics;
pub mod mp4;
pub mod mp4_in;
pub mod proto;
pub mod server;
pub mod state;
pub mod time;

/// Microseconds since the epoch, now.
pub fn now_us() -> i64 {
    use storage_core::Clock;
    storage_core::SystemClock.now_us()
}
