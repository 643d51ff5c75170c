//! Store configuration and its limits.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Result};

/// Shortest segment duration accepted: shorter multiplies files, keys and catalog records.
pub const SEGMENT_DURATION_US_MIN: i64 = 1_000_000;
/// Longest segment duration accepted: a segment is the unit of erasure, so it bounds how long
/// expired video outlives its retention.
pub const SEGMENT_DURATION_US_MAX: i64 = 24 * 3600 * 1_000_000;
/// Smallest segment size cap accepted (a few large frames must fit).
pub const SEGMENT_BYTES_MIN: u64 = 64 << 20;
/// Largest segment size cap accepted; recovery may have to scan up to this much of one file.
pub const SEGMENT_BYTES_MAX: u64 = 4 << 30;
/// Streams open at once in one store. Each costs at most ~`WRITE_BATCH_BYTES` + one frame of
/// memory and one open file (plus its sidecar), so 8,192 stays within common fd limits.
pub const STREAMS_MAX: usize = 8192;
/// Threads issuing fsyncs in one group commit; the device overlaps concurrent flushes.
pub const FLUSHER_THREADS_MAX: usize = 64;

/// When appended frames are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Group commit: every stream with new data is written and fsynced so that an appended
    /// frame is durable about this long after it was appended (the flusher starts each round
    /// early by as long as recent rounds took), until the disk cannot keep up.
    Interval(Duration),
    /// Each stream fsyncs when a key frame arrives (the previous GOP becomes durable), on the
    /// appending thread.
    EveryKeyFrame,
    /// No fsync until a segment is sealed; durability is whatever the OS writes back.
    OsWriteBack,
}

/// Configuration of a [`crate::Store`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory holding `catalog/` and `segments/`.
    pub root: PathBuf,
    /// Directory of the key store. Put it on a different volume from `root` in production: the
    /// wrapped keys must never travel with the ciphertext.
    pub key_dir: PathBuf,
    /// Directory of the file KEK provider (when that provider is used).
    pub kek_dir: PathBuf,
    /// A segment is rolled at the first key frame after it spans this long.
    pub segment_duration_us: i64,
    /// A segment is rolled before it would exceed this size, key frame or not.
    pub segment_bytes_max: u64,
    /// A pause in a stream longer than this starts a new segment and shows as a gap.
    pub gap_us: i64,
    /// When appends become durable.
    pub flush: FlushPolicy,
    /// Threads issuing fsyncs during a group commit.
    pub flusher_threads: usize,
    /// Retention of cameras without their own setting, in days (at least 30).
    pub retention_days_default: u32,
    /// How often the background sweeper runs; `None` runs sweeps only on demand.
    pub sweep_interval: Option<Duration>,
    /// Largest distance between a frame's capture time and the store's clock: no frame may be
    /// stamped further ahead, and a live stream's frames no further behind (a backfill's may
    /// be as old as [`CAPTURE_TIME_MIN_US`]). DURABILITY.md "Capture time and arrival".
    pub capture_skew_us: i64,
}

/// The earliest capture time the store takes, 2000-01-01T00:00:00Z: a camera stamping the
/// epoch (no clock battery, no NTP yet) or a wrapped counter is refused, not stored as 1970.
pub const CAPTURE_TIME_MIN_US: i64 = 946_684_800_000_000;
/// Default [`StoreConfig::capture_skew_us`]: five minutes, many times an NTP-synced camera's
/// drift and a live stream's buffering, far less than a clock reset.
pub const CAPTURE_SKEW_US_DEFAULT: i64 = 300_000_000;
/// Largest [`StoreConfig::capture_skew_us`]: a day.
pub const CAPTURE_SKEW_US_MAX: i64 = 86_400_000_000;

impl StoreConfig {
    /// Defaults under `root`: 15-minute segments capped at 1 GiB, a 1 s group commit, keys in
    /// `root/keys`, KEKs in `root/kek` (see DESIGN.md "Defaults and limits" for why).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        StoreConfig {
            key_dir: root.join("keys"),
            kek_dir: root.join("kek"),
            root,
            segment_duration_us: 15 * 60 * 1_000_000,
            segment_bytes_max: 1 << 30,
            gap_us: 5_000_000,
            flush: FlushPolicy::Interval(Duration::from_secs(1)),
            flusher_threads: 4,
            retention_days_default: crate::retention::RETENTION_DAYS_MIN,
            sweep_interval: Some(Duration::from_secs(3600)),
            capture_skew_us: CAPTURE_SKEW_US_DEFAULT,
        }
    }

    /// Refuses values outside the documented limits.
    pub fn validate(&self) -> Result<()> {
        let range = |what: &str, v: i128, lo: i128, hi: i128| {
            if v < lo || v > hi {
                Err(Error::InvalidArgument(format!("{what} = {v} is outside {lo}..={hi}")))
            } else {
                Ok(())
            }
        };
        range("segment_duration_us", self.segment_duration_us.into(), SEGMENT_DURATION_US_MIN.into(), SEGMENT_DURATION_US_MAX.into())?;
        range("segment_bytes_max", self.segment_bytes_max.into(), SEGMENT_BYTES_MIN.into(), SEGMENT_BYTES_MAX.into())?;
        range("gap_us", self.gap_us.into(), 1, SEGMENT_DURATION_US_MAX.into())?;
        range("flusher_threads", self.flusher_threads as i128, 1, FLUSHER_THREADS_MAX as i128)?;
        range("capture_skew_us", self.capture_skew_us.into(), 1_000_000, CAPTURE_SKEW_US_MAX.into())?;
        if let FlushPolicy::Interval(d) = self.flush {
            if d.is_zero() || d > Duration::from_secs(60) {
                return Err(Error::InvalidArgument("flush interval must be within (0, 60 s]".into()));
            }
        }
        crate::retention::check_days(self.retention_days_default)
            .map_err(|e| Error::InvalidArgument(format!("configuration refused: retention_days_default: {e}")))?;
        if self.key_dir.starts_with(self.root.join("segments")) {
            return Err(Error::InvalidArgument("key_dir must not lie inside the segments directory".into()));
        }
        Ok(())
    }
}
