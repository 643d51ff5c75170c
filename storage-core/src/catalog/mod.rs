//! The catalog: a durable, append-only log of segment lifecycle events (opened, sealed,
//! dropped), from which the camera/time index is rebuilt at open without reading any segment.
//! Layout in DESIGN.md "Catalog".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::{read_up_to, Vfs, VfsFile};
use crate::segment::format::{le_i64, le_u32, le_u64, CAMERA_ID_BYTES_MAX};
use crate::{Error, Result, SegmentId};

const MAGIC: &[u8; 8] = b"CAMVCATL";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 32;
const H_CRC: usize = HEADER_LEN - 4;
/// Record framing: crc32 (4) + payload length (4) + type (1).
const FRAME_LEN: usize = 9;
/// Largest catalog record payload. The biggest (Open with a 64-byte camera id) is 81 bytes;
/// anything longer read from disk is damage, not data.
pub(crate) const RECORD_PAYLOAD_BYTES_MAX: usize = 128;
/// Bytes read per I/O while loading the catalog.
const LOAD_CHUNK_BYTES: usize = 1 << 20;
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
}

/// One catalog event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CatalogRecord {
    Open { segment: SegmentId, created_us: i64, camera: String },
    Sealed { segment: SegmentId, info: SealedInfo },
    Dropped { segment: SegmentId },
}

impl CatalogRecord {
    fn encode(&self) -> Vec<u8> {
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
                2
            }
            CatalogRecord::Dropped { segment } => {
                p.extend_from_slice(&segment.0.to_le_bytes());
                3
            }
        };
        debug_assert!(p.len() <= RECORD_PAYLOAD_BYTES_MAX);
        let mut out = Vec::with_capacity(FRAME_LEN + p.len());
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.push(ty);
        out.extend_from_slice(&p);
        let crc = crc32fast::hash(&out[4..]);
        out[..4].copy_from_slice(&crc.to_le_bytes());
        out
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
            (2, 56) => Some(CatalogRecord::Sealed {
                segment: SegmentId(le_u64(p, 0)),
                info: SealedInfo {
                    first_ts_us: le_i64(p, 8),
                    last_ts_us: le_i64(p, 16),
                    frame_count: le_u32(p, 24),
                    keyframe_count: le_u32(p, 28),
                    footer_offset: le_u64(p, 32),
                    file_len: le_u64(p, 40),
                    payload_bytes: le_u64(p, 48),
                },
            }),
            (3, 8) => Some(CatalogRecord::Dropped { segment: SegmentId(le_u64(p, 0)) }),
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
    path: PathBuf,
    file: Arc<dyn VfsFile>,
    len: u64,
    poisoned: Option<String>,
}

/// Result of loading the catalog.
pub(crate) struct Loaded {
    pub catalog: Catalog,
    pub entries: BTreeMap<SegmentId, CatalogEntry>,
    pub max_segment: Option<SegmentId>,
}

impl Catalog {
    /// Opens (or creates) the catalog in `dir` and replays it. A torn last record is cut off;
    /// damage followed by more than one record's worth of bytes is corruption and refuses to
    /// open rather than drop what follows.
    pub(crate) fn open(vfs: &Arc<dyn Vfs>, dir: &Path) -> Result<Loaded> {
        vfs.create_dir_all(dir).map_err(|e| Error::io("create catalog directory", dir, e))?;
        let path = dir.join(FILE_NAME);
        if !vfs.exists(&path) {
            let mut h = [0u8; HEADER_LEN];
            h[..8].copy_from_slice(MAGIC);
            h[8..10].copy_from_slice(&VERSION.to_le_bytes());
            h[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
            let crc = crc32fast::hash(&h[..H_CRC]);
            h[H_CRC..].copy_from_slice(&crc.to_le_bytes());
            // Write to a temporary name, fsync, rename, fsync dir: a crash never leaves a
            // catalog without its header.
            let tmp = dir.join("catalog.log.tmp");
            (|| {
                if vfs.exists(&tmp) {
                    vfs.remove_file(&tmp)?;
                }
                let f = vfs.create_new(&tmp)?;
                f.write_at(&h, 0)?;
                f.sync_data()?;
                vfs.rename(&tmp, &path)?;
                vfs.sync_dir(dir)
            })()
            .map_err(|e| Error::io("create catalog", &path, e))?;
        }
        let file = vfs.open(&path).map_err(|e| Error::io("open catalog", &path, e))?;
        let file_len = file.len().map_err(|e| Error::io("stat catalog", &path, e))?;
        let mut h = [0u8; HEADER_LEN];
        if read_up_to(file.as_ref(), &mut h, 0).map_err(|e| Error::io("read catalog", &path, e))? != HEADER_LEN
            || &h[..8] != MAGIC
            || crc32fast::hash(&h[..H_CRC]) != le_u32(&h, H_CRC)
        {
            return Err(Error::Corrupt { path, offset: Some(0), detail: "catalog header fails its check".into() });
        }
        let mut entries: BTreeMap<SegmentId, CatalogEntry> = BTreeMap::new();
        let mut max_segment = None;
        let mut pos = HEADER_LEN as u64;
        let mut buf = vec![0u8; LOAD_CHUNK_BYTES];
        let mut buf_start = pos;
        let mut buf_len = 0usize;
        loop {
            // Keep at least one whole record in the window.
            let rel = (pos - buf_start) as usize;
            if buf_len - rel < FRAME_LEN + RECORD_PAYLOAD_BYTES_MAX && buf_start + (buf_len as u64) < file_len {
                buf.copy_within(rel..buf_len, 0);
                buf_len -= rel;
                buf_start = pos;
                let n = read_up_to(file.as_ref(), &mut buf[buf_len..], buf_start + buf_len as u64)
                    .map_err(|e| Error::io("read catalog", &path, e))?;
                buf_len += n;
            }
            let rel = (pos - buf_start) as usize;
            let avail = &buf[rel..buf_len];
            if avail.is_empty() {
                break;
            }
            let parsed = (|| {
                if avail.len() < FRAME_LEN {
                    return None;
                }
                let plen = le_u32(avail, 4) as usize;
                if plen > RECORD_PAYLOAD_BYTES_MAX || avail.len() < FRAME_LEN + plen {
                    return None;
                }
                if crc32fast::hash(&avail[4..FRAME_LEN + plen]) != le_u32(avail, 0) {
                    return None;
                }
                Some((CatalogRecord::decode(avail[8], &avail[FRAME_LEN..FRAME_LEN + plen]), FRAME_LEN + plen))
            })();
            let Some((rec, used)) = parsed else {
                let rest = file_len - pos;
                if rest > (FRAME_LEN + RECORD_PAYLOAD_BYTES_MAX) as u64 {
                    return Err(Error::Corrupt {
                        path,
                        offset: Some(pos),
                        detail: format!("catalog record at {pos} fails its check with {rest} bytes after it"),
                    });
                }
                tracing::warn!(path = %path.display(), offset = pos, bytes = rest, "cutting torn catalog tail");
                file.set_len(pos).and_then(|_| file.sync_data()).map_err(|e| Error::io("truncate catalog", &path, e))?;
                break;
            };
            let Some(rec) = rec else {
                return Err(Error::Corrupt {
                    path,
                    offset: Some(pos),
                    detail: "catalog record has a valid CRC but an unknown type or shape".into(),
                });
            };
            match rec {
                CatalogRecord::Open { segment, created_us, camera } => {
                    max_segment = max_segment.max(Some(segment));
                    entries.insert(segment, CatalogEntry { camera, created_us, sealed: None });
                }
                CatalogRecord::Sealed { segment, info } => match entries.get_mut(&segment) {
                    Some(e) => e.sealed = Some(info),
                    None => {
                        return Err(Error::Corrupt {
                            path,
                            offset: Some(pos),
                            detail: format!("segment {} sealed but never opened", segment.0),
                        })
                    }
                },
                CatalogRecord::Dropped { segment } => {
                    entries.remove(&segment);
                }
            }
            pos += used as u64;
        }
        Ok(Loaded { catalog: Catalog { path, file, len: pos, poisoned: None }, entries, max_segment })
    }

    /// Appends one record and fsyncs. A failed fsync poisons the catalog for good.
    pub(crate) fn append(&mut self, rec: &CatalogRecord) -> Result<()> {
        self.append_many(std::slice::from_ref(rec))
    }

    /// Appends several records with one write and one fsync.
    pub(crate) fn append_many(&mut self, recs: &[CatalogRecord]) -> Result<()> {
        if let Some(p) = &self.poisoned {
            return Err(Error::Poisoned(p.clone()));
        }
        let mut bytes = Vec::with_capacity(recs.len() * 72);
        for r in recs {
            bytes.extend_from_slice(&r.encode());
        }
        self.file.write_at(&bytes, self.len).map_err(|e| Error::io("append catalog", &self.path, e))?;
        if let Err(e) = self.file.sync_data() {
            self.poisoned = Some(format!("fsync of {} failed: {e}", self.path.display()));
            return Err(Error::io("fsync catalog", &self.path, e));
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Whether an earlier fsync failed.
    pub(crate) fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
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
            },
        };
        let b = rec.encode();
        // DESIGN.md "Catalog": crc, len=56, type=2, then eight little-endian fields.
        assert_eq!(&b[4..9], &[56, 0, 0, 0, 2]);
        assert_eq!(&b[9..17], &7u64.to_le_bytes());
        assert_eq!(&b[57..65], &8u64.to_le_bytes());
        assert_eq!(b.len(), 65);
        assert_eq!(CatalogRecord::decode(2, &b[9..]), Some(rec));
    }
}
