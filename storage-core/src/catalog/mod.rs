//! The catalog: a durable, append-only log of segment lifecycle events (opened, sealed,
//! dropped), from which the camera/time index is rebuilt at open without reading any segment.
//! Layout in FORMAT.md "Catalog records".

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::io::Vfs;
use crate::log::{Access, RecordLog};
use crate::segment::format::{le_i64, le_u32, le_u64, CAMERA_ID_BYTES_MAX};
use crate::{Error, Result, SegmentId};

const MAGIC: &[u8; 8] = b"CAMVCATL";
/// Largest catalog record payload. The biggest (Open with a 64-byte camera id) is 81 bytes;
/// anything longer read from disk is damage, not data.
pub(crate) const RECORD_PAYLOAD_BYTES_MAX: usize = 128;
pub(crate) const FILE_NAME: &str = "catalog.log";

/// Summary of a sealed segment, enough to answer queries without opening it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedInfo {
    /// First frame's timestamp.
    pub first_ts_us: i64,
    /// Last frame's timestamp.
    pub last_ts_us: i64,
    /// Video frames in the segment.
    pub frame_count: u32,
    /// Key frames in the segment.
    pub keyframe_count: u32,
    /// Offset of the footer record (= end of the frame records).
    pub footer_offset: u64,
    /// Length of the file.
    pub file_len: u64,
    /// Sum of frame payload sizes (plaintext bytes).
    pub payload_bytes: u64,
    /// The store's clock when the segment was sealed: no frame of it arrived later. Retention
    /// counts from here as well as from the capture times (DURABILITY.md "Capture time and arrival"), so a camera
    /// whose clock says 1970 does not lose the video it recorded today.
    pub sealed_us: i64,
}

/// One catalog event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CatalogRecord {
    Open { segment: SegmentId, created_us: i64, camera: String },
    Sealed { segment: SegmentId, info: SealedInfo },
    Dropped { segment: SegmentId },
    Erased { segment: SegmentId },
}

impl CatalogRecord {
    fn encode(&self) -> (u8, Vec<u8>) {
        let mut p = Vec::with_capacity(96);
        let ty = match self {
            CatalogRecord::Open { segment, created_us, camera } => {
                p.extend_from_slice(&segment.0.to_le_bytes());
                p.extend_from_slice(&created_us.to_le_bytes());
                p.push(camera.len() as u8);
                p.extend_from_slice(camera.as_bytes());
                1
            }
            CatalogRecord::Sealed { segment, info } => {
                p.extend_from_slice(&segment.0.to_le_bytes());
                p.extend_from_slice(&info.first_ts_us.to_le_bytes());
                p.extend_from_slice(&info.last_ts_us.to_le_bytes());
                p.extend_from_slice(&info.frame_count.to_le_bytes());
                p.extend_from_slice(&info.keyframe_count.to_le_bytes());
                p.extend_from_slice(&info.footer_offset.to_le_bytes());
                p.extend_from_slice(&info.file_len.to_le_bytes());
                p.extend_from_slice(&info.payload_bytes.to_le_bytes());
                p.extend_from_slice(&info.sealed_us.to_le_bytes());
                2
            }
            CatalogRecord::Dropped { segment } => {
                p.extend_from_slice(&segment.0.to_le_bytes());
                3
            }
            CatalogRecord::Erased { segment } => {
                p.extend_from_slice(&segment.0.to_le_bytes());
                4
            }
        };
        debug_assert!(p.len() <= RECORD_PAYLOAD_BYTES_MAX);
        (ty, p)
    }

    fn decode(ty: u8, p: &[u8]) -> Option<CatalogRecord> {
        match (ty, p.len()) {
            (1, n) if n >= 17 => {
                let len = p[16] as usize;
                if len == 0 || len > CAMERA_ID_BYTES_MAX || n != 17 + len {
                    return None;
                }
                let camera = std::str::from_utf8(&p[17..]).ok()?.to_string();
                Some(CatalogRecord::Open { segment: SegmentId(le_u64(p, 0)), created_us: le_i64(p, 8), camera })
            }
            // A Sealed record from before the seal time was kept (56 bytes): its arrival is
            // taken as its last capture time, the rule it was written under.
            (2, n @ (56 | 64)) => Some(CatalogRecord::Sealed {
                segment: SegmentId(le_u64(p, 0)),
                info: SealedInfo {
                    first_ts_us: le_i64(p, 8),
                    last_ts_us: le_i64(p, 16),
                    frame_count: le_u32(p, 24),
                    keyframe_count: le_u32(p, 28),
                    footer_offset: le_u64(p, 32),
                    file_len: le_u64(p, 40),
                    payload_bytes: le_u64(p, 48),
                    sealed_us: le_i64(p, if n == 64 { 56 } else { 16 }),
                },
            }),
            (3, 8) => Some(CatalogRecord::Dropped { segment: SegmentId(le_u64(p, 0)) }),
            (4, 8) => Some(CatalogRecord::Erased { segment: SegmentId(le_u64(p, 0)) }),
            _ => None,
        }
    }
}

/// What the catalog knows of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CatalogEntry {
    pub camera: String,
    pub created_us: i64,
    pub sealed: Option<SealedInfo>,
}

/// The open catalog log.
pub(crate) struct Catalog {
    log: RecordLog,
}

/// Result of loading the catalog.
pub(crate) struct Loaded {
    pub catalog: Catalog,
    pub entries: BTreeMap<SegmentId, CatalogEntry>,
    pub max_segment: Option<SegmentId>,
}

impl Catalog {
    /// Opens (or creates) the catalog in `dir` and replays it into per-segment entries.
    pub(crate) fn open(vfs: &Arc<dyn Vfs>, dir: &Path, access: Access) -> Result<Loaded> {
        let mut entries: BTreeMap<SegmentId, CatalogEntry> = BTreeMap::new();
        let mut max_segment = None;
        let path = dir.join(FILE_NAME);
        let log = RecordLog::open(vfs, dir, FILE_NAME, MAGIC, RECORD_PAYLOAD_BYTES_MAX, access, 0, |pos, ty, payload| {
            let corrupt = |detail: String| Error::Corrupt { path: path.clone(), offset: Some(pos), detail };
            let Some(rec) = CatalogRecord::decode(ty, payload) else {
                return Err(corrupt("catalog record has a valid CRC but an unknown type or shape".into()));
            };
            match rec {
                CatalogRecord::Open { segment, created_us, camera } => {
                    max_segment = max_segment.max(Some(segment));
                    entries.insert(segment, CatalogEntry { camera, created_us, sealed: None });
                }
                CatalogRecord::Sealed { segment, info } => match entries.get_mut(&segment) {
                    Some(e) => e.sealed = Some(info),
                    None => return Err(corrupt(format!("segment {} sealed but never opened", segment.0))),
                },
                CatalogRecord::Dropped { segment } | CatalogRecord::Erased { segment } => {
                    entries.remove(&segment);
                }
            }
            Ok(())
        })?;
        Ok(Loaded { catalog: Catalog { log }, entries, max_segment })
    }

    /// Appends records with one write and one fsync. A failed fsync poisons the catalog for
    /// good. (Single records go through the store's group commit, which batches them here.)
    pub(crate) fn append_many(&mut self, recs: &[CatalogRecord]) -> Result<()> {
        let framed: Vec<(u8, Vec<u8>)> = recs.iter().map(CatalogRecord::encode).collect();
        self.log.append_many(&framed).map(|_| ())
    }

    /// Whether an earlier fsync failed.
    pub(crate) fn poisoned(&self) -> Option<&str> {
        self.log.poisoned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_record_has_the_documented_bytes() {
        let rec = CatalogRecord::Sealed {
            segment: SegmentId(7),
            info: SealedInfo {
                first_ts_us: 1,
                last_ts_us: 2,
                frame_count: 3,
                keyframe_count: 4,
                footer_offset: 5,
                file_len: 6,
                payload_bytes: 8,
                sealed_us: 9,
            },
        };
        let mut b = Vec::new();
        let (ty, p) = rec.encode();
        crate::log::frame(ty, &p, &mut b);
        // FORMAT.md "Catalog records": crc, len=64, type=2, then nine little-endian fields.
        assert_eq!(&b[4..9], &[64, 0, 0, 0, 2]);
        assert_eq!(&b[9..17], &7u64.to_le_bytes());
        assert_eq!(&b[57..65], &8u64.to_le_bytes());
        assert_eq!(&b[65..73], &9i64.to_le_bytes());
        assert_eq!(b.len(), 73);
        assert_eq!(CatalogRecord::decode(2, &b[9..]), Some(rec));
    }
}
