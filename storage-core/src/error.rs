//! The crate's one error type.
//!
//! Variants are semantic (what the caller can do about it), in the spirit of gRPC's canonical
//! codes, so that the server's mapping to status codes is one `match`. No variant ever carries
//! key material or plaintext video: messages name segments, cameras, offsets and paths only.

use std::path::PathBuf;

use crate::SegmentId;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in storage-core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request itself is malformed (bad camera id, empty payload, bad configuration, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A frame's timestamp does not increase within its stream.
    #[error("camera {camera}: frame at {ts_us} us is not after the stream's previous frame at {last_ts_us} us")]
    OutOfOrder {
        /// Camera of the stream.
        camera: String,
        /// Timestamp of the rejected frame.
        ts_us: i64,
        /// Timestamp of the stream's previous frame.
        last_ts_us: i64,
    },

    /// A frame's capture time is not one the store can trust (DURABILITY.md "Capture time and
    /// arrival"): before [`crate::CAPTURE_TIME_MIN_US`], after the store's clock plus the skew
    /// bound, or, in a live stream, further before the store's clock than the skew bound.
    #[error("camera {camera}: capture time {ts_us} us {reason}")]
    CaptureTime {
        /// Camera of the stream.
        camera: String,
        /// Timestamp of the rejected frame.
        ts_us: i64,
        /// The store's clock when it was refused.
        store_now_us: i64,
        /// Which bound it is outside, with the bound.
        reason: String,
    },

    /// A frame would overlap video already stored (or being written by another stream) for the
    /// camera.
    #[error("camera {camera}: frame at {ts_us} us overlaps stored video of segment {segment} ({first_ts_us}..={last_ts_us} us)")]
    Overlap {
        /// Camera of the stream.
        camera: String,
        /// Timestamp of the rejected frame.
        ts_us: i64,
        /// The segment it collides with.
        segment: SegmentId,
        /// First frame timestamp of that segment.
        first_ts_us: i64,
        /// Last frame timestamp of that segment.
        last_ts_us: i64,
    },

    /// A named limit was exceeded (frame size, camera id length, open streams, ...).
    #[error("limit exceeded: {what} is {actual}, the maximum is {max}")]
    LimitExceeded {
        /// Which limit.
        what: &'static str,
        /// The value that was asked for.
        actual: u64,
        /// The limit.
        max: u64,
    },

    /// The request is well formed but the state forbids it: a legal hold, the retention floor,
    /// unexpired video, open streams.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),

    /// Nothing stored matches (unknown camera, unknown segment).
    #[error("not found: {0}")]
    NotFound(String),

    /// Stored data failed an integrity check (CRC, authentication tag, structure). Reported,
    /// never repaired into different data. See [`crate::Store::corruptions`].
    #[error("corruption in {path}: {detail}")]
    Corrupt {
        /// File that holds the damage.
        path: PathBuf,
        /// Byte offset of the first damaged structure, where known.
        offset: Option<u64>,
        /// What is wrong, in words.
        detail: String,
    },

    /// A previous durable write (fsync) failed; the writer refuses all further writes because
    /// the kernel may have dropped the dirty pages. Reopen the store to recover.
    #[error("writer poisoned by an earlier I/O failure: {0}")]
    Poisoned(String),

    /// The disk is full. New writes are refused; nothing stored is deleted to make room.
    #[error("no space left on the device while writing {path}")]
    NoSpace {
        /// File being written.
        path: PathBuf,
    },

    /// The stream or store is closed.
    #[error("closed")]
    Closed,

    /// Any other I/O failure, with the operation and the file.
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A key could not be created, wrapped, unwrapped or destroyed. The message never holds key
    /// bytes.
    #[error("key management: {0}")]
    Key(String),

    /// Another process holds the store (a running server, or a second writer).
    #[error("{path} is in use by another process ({detail}); stop it first")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as far as is known.
        detail: String,
    },

    /// The directories given do not belong together (a root with another store's key
    /// directory, a key directory missing), or a directory holds files of no known store.
    /// Nothing was created, changed or destroyed.
    #[error("store identity: {0}")]
    Identity(String),

    /// A key file is readable or writable by other local users.
    #[error("{path} has mode {mode:04o}: key files must be readable by their owner only; fix it with: chmod 600 {path}")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The store was decommissioned: its keys are destroyed; only the audit log and the
    /// certificate remain readable.
    #[error("this store was decommissioned: {0}")]
    Decommissioned(String),
}

impl Error {
    /// Maps an OS error on `path` during `op`, singling out a full disk.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        // ENOSPC (28) and EDQUOT (122) both mean "no room": refuse loudly, delete nothing.
        if source.kind() == std::io::ErrorKind::StorageFull || matches!(source.raw_os_error(), Some(28 | 122)) {
            return Error::NoSpace { path };
        }
        Error::Io { op, path, source }
    }

    /// A failed fsync: never reported as a full disk, because a failed fsync must poison its
    /// writer whatever the errno (the kernel may have dropped the dirty pages).
    pub(crate) fn fsync(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { op, path: path.into(), source }
    }

    /// True when the error means the disk is full.
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::NoSpace { .. })
    }
}
