//! # camvault storage-core
//!
//! An embeddable, append-only video segment store for public-sector CCTV. Frames are indexed
//! by camera and time, every segment is encrypted with AES-256-GCM under its own data key, and
//! writes from thousands of streams are group-committed.
//!
//! ```no_run
//! use storage_core::{Codec, FrameIn, Store, StoreConfig};
//! # fn main() -> storage_core::Result<()> {
//! let store = Store::open(StoreConfig::new("./camvault-data"))?;
//! let mut stream = store.open_stream("cam-0001", Codec::H264, b"\0\0\0\x01\x67...")?;
//! let seq = stream.append(FrameIn { ts_us: 1_700_000_000_000_000, pts_90k: Some(0), key: true, payload: b"..." })?;
//! stream.flush()?; // or wait for the group commit: stream.wait_durable(seq, ...)
//! for item in store.read("cam-0001", 1_700_000_000_000_000, 1_700_000_001_000_000)? {
//!     let _ = item?;
//! }
//! # Ok(()) }
//! ```
//!
//! The on-disk formats, crash invariants, fsync order and key hierarchy are in `FORMAT.md`, `DURABILITY.md` and `SECURITY.md`.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod audit;
mod catalog;
pub mod clock;
mod config;
mod error;
#[doc(hidden)]
pub mod fuzz;
mod identity;
pub mod io;
pub mod keys;
mod log;
pub mod offline;
pub mod retention;
mod segment;
pub mod signing;
mod store;
#[doc(hidden)]
pub mod testing;

pub use catalog::SealedInfo;
pub use clock::{Clock, SimClock, SystemClock};
pub use config::{
    FlushPolicy, StoreConfig, CAPTURE_SKEW_US_DEFAULT, CAPTURE_SKEW_US_MAX, CAPTURE_TIME_MIN_US, FLUSHER_THREADS_MAX, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN, SEGMENT_DURATION_US_MAX, SEGMENT_DURATION_US_MIN, STREAMS_MAX,
};
pub use error::{Error, Result};
pub use identity::StoreId;
pub use segment::format::{check_camera_id, CAMERA_ID_BYTES_MAX};
pub use segment::writer::WRITE_BATCH_BYTES;
pub use segment::{Codec, CODEC_CONFIG_BYTES_MAX, FRAME_BYTES_MAX};
pub use store::{
    CodecConfig, CorruptionReport, Env, EraseCertificate, Frame, FrameIn, FrameReader, Metrics, ReadItem, Recordings, RoundPacer,
    SegmentSummary, Span, Store, StreamKind, StreamWriter, SweepReport,
};

/// Identifies a segment; allocated in increasing order, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

impl std::fmt::Display for SegmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}
