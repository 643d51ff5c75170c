//! The camvault server as a library: the gRPC services over storage-core, the MP4 export
//! writer and the H.264/H.265 parsing they need. The `camvault` binary is a thin front end over
//! it; benchmarks and tests drive the same code.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::unwrap_used)]

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
