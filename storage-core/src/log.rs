//! An append-only, CRC-framed, fsynced record log: the shared shape of the catalog, the control
//! log (retention and holds) and the audit log. Layout in FORMAT.md "Record logs".

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::{read_up_to, write_file_atomic, Vfs, VfsFile};
use crate::segment::format::le_u32;
use crate::{Error, Result};

const VERSION: u16 = 1;
pub(crate) const HEADER_LEN: usize = 32;
const H_CRC: usize = HEADER_LEN - 4;
/// Record framing: crc32 (4) + payload length (4) + type (1).
pub(crate) const FRAME_LEN: usize = 9;
/// Bytes read per I/O while replaying.
const REPLAY_CHUNK_BYTES: usize = 1 << 20;

/// One open log.
pub(crate) struct RecordLog {
    path: PathBuf,
    file: Arc<dyn VfsFile>,
    len: u64,
    poisoned: Option<String>,
    payload_max: usize,
    torn: Option<TornTail>,
}

/// Encodes one framed record.
pub(crate) fn frame(ty: u8, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.push(ty);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// How [`RecordLog::open`] may treat the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// A writer: creates a missing log, cuts a torn tail.
    Write {
        /// Save cut bytes beside the log as `<name>.torn-<offset>` (the audit log's evidence).
        keep_torn: bool,
    },
    /// A reader (offline tools): never creates, never cuts; replay stops at a torn tail.
    Read,
}

/// A torn tail found at open: where, how long, and (for a writer) where its bytes were kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TornTail {
    pub offset: u64,
    pub bytes: u64,
    pub sha256_hex: String,
    pub kept_as: Option<PathBuf>,
}

/// Whether the bytes of `file` in `[from, to)` are all zero (a file extended by a write whose
/// data never reached the disk).
fn all_zero(file: &dyn VfsFile, from: u64, to: u64, path: &Path) -> Result<bool> {
    let mut buf = vec![0u8; REPLAY_CHUNK_BYTES];
    let mut pos = from;
    while pos < to {
        let n = ((to - pos) as usize).min(buf.len());
        let got = read_up_to(file, &mut buf[..n], pos).map_err(|e| Error::io("read log", path, e))?;
        if got == 0 {
            break;
        }
        if buf[..got].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += got as u64;
    }
    Ok(true)
}

impl RecordLog {
    /// Opens `dir/name` with `magic`, calling `on_record(offset, type, payload)` for each record
    /// in order. Only a torn final write is a torn tail (FORMAT.md "Record logs"): the first
    /// bad record at or after `durable_len` (bytes an anchor kept elsewhere says were
    /// acknowledged) whose declared length runs to or past the end of the file, or after which
    /// every byte is zero. A writer cuts it (recording it in [`RecordLog::torn`]); any other
    /// damage is corruption, reported with its offset and never cut.
    #[allow(clippy::too_many_arguments, reason = "each is one property of the log being opened; a struct would only rename them")]
    pub(crate) fn open(
        vfs: &Arc<dyn Vfs>,
        dir: &Path,
        name: &str,
        magic: &[u8; 8],
        payload_max: usize,
        access: Access,
        durable_len: u64,
        mut on_record: impl FnMut(u64, u8, &[u8]) -> Result<()>,
    ) -> Result<RecordLog> {
        let path = dir.join(name);
        if let Access::Write { .. } = access {
            vfs.create_dir_all(dir).map_err(|e| Error::io("create log directory", dir, e))?;
            if !vfs.exists(&path) {
                let mut h = [0u8; HEADER_LEN];
                h[..8].copy_from_slice(magic);
                h[8..10].copy_from_slice(&VERSION.to_le_bytes());
                h[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
                let crc = crc32fast::hash(&h[..H_CRC]);
                h[H_CRC..].copy_from_slice(&crc.to_le_bytes());
                // Never a log without its header.
                write_file_atomic(vfs.as_ref(), dir, &path, &h).map_err(|e| Error::io("create log", &path, e))?;
            }
        }
        let file = vfs.open(&path).map_err(|e| Error::io("open log", &path, e))?;
        let file_len = file.len().map_err(|e| Error::io("stat log", &path, e))?;
        let mut h = [0u8; HEADER_LEN];
        if read_up_to(file.as_ref(), &mut h, 0).map_err(|e| Error::io("read log", &path, e))? != HEADER_LEN
            || &h[..8] != magic
            || crc32fast::hash(&h[..H_CRC]) != le_u32(&h, H_CRC)
        {
            return Err(Error::Corrupt { path, offset: Some(0), detail: "log header fails its check".into() });
        }
        if file_len < durable_len {
            return Err(Error::Corrupt {
                path,
                offset: Some(file_len),
                detail: format!(
                    "log is {file_len} bytes but {durable_len} bytes of it were acknowledged: it was truncated, rolled back or replaced"
                ),
            });
        }
        let record_max = FRAME_LEN + payload_max;
        let mut pos = HEADER_LEN as u64;
        let mut buf = vec![0u8; REPLAY_CHUNK_BYTES.max(2 * record_max)];
        let mut buf_start = pos;
        let mut buf_len = 0usize;
        let mut torn = None;
        loop {
            // Keep at least one whole record in the window.
            let rel = (pos - buf_start) as usize;
            if buf_len - rel < record_max && buf_start + (buf_len as u64) < file_len {
                buf.copy_within(rel..buf_len, 0);
                buf_len -= rel;
                buf_start = pos;
                let n = read_up_to(file.as_ref(), &mut buf[buf_len..], buf_start + buf_len as u64)
                    .map_err(|e| Error::io("read log", &path, e))?;
                buf_len += n;
            }
            let rel = (pos - buf_start) as usize;
            let avail = &buf[rel..buf_len];
            if avail.is_empty() {
                break;
            }
            let plen = if avail.len() >= FRAME_LEN { le_u32(avail, 4) as usize } else { usize::MAX };
            let ok =
                plen <= payload_max && avail.len() >= FRAME_LEN + plen && crc32fast::hash(&avail[4..FRAME_LEN + plen]) == le_u32(avail, 0);
            if !ok {
                let rest = file_len - pos;
                let declared_end = if plen <= payload_max { Some(pos + (FRAME_LEN + plen) as u64) } else { None };
                let is_torn = pos >= durable_len
                    && (rest < FRAME_LEN as u64
                        || declared_end.is_some_and(|end| end >= file_len)
                        || all_zero(file.as_ref(), declared_end.unwrap_or(pos).min(file_len), file_len, &path)?);
                if !is_torn {
                    let why = if pos < durable_len { "acknowledged record" } else { "record" };
                    return Err(Error::Corrupt {
                        path,
                        offset: Some(pos),
                        detail: format!(
                            "{why} at byte {pos} fails its check with {rest} bytes from it to the end (damage, not a torn write)"
                        ),
                    });
                }
                let mut bytes = vec![0u8; rest as usize];
                read_up_to(file.as_ref(), &mut bytes, pos).map_err(|e| Error::io("read log", &path, e))?;
                let sha256_hex = crate::signing::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
                let mut t = TornTail { offset: pos, bytes: rest, sha256_hex, kept_as: None };
                if let Access::Write { keep_torn } = access {
                    if keep_torn {
                        let kept = dir.join(format!("{name}.torn-{pos}"));
                        write_file_atomic(vfs.as_ref(), dir, &kept, &bytes).map_err(|e| Error::io("keep torn log tail", &kept, e))?;
                        t.kept_as = Some(kept);
                    }
                    tracing::warn!(path = %path.display(), offset = pos, bytes = rest, "cutting torn log tail (the last write did not complete)");
                    file.set_len(pos).and_then(|_| file.sync_data()).map_err(|e| Error::io("truncate log", &path, e))?;
                }
                torn = Some(t);
                break;
            }
            on_record(pos, avail[8], &avail[FRAME_LEN..FRAME_LEN + plen])?;
            pos += (FRAME_LEN + plen) as u64;
        }
        Ok(RecordLog { path, file, len: pos, poisoned: None, payload_max, torn })
    }

    /// The torn tail found (and, for a writer, cut) at open.
    pub(crate) fn torn(&self) -> Option<&TornTail> {
        self.torn.as_ref()
    }

    /// Bytes of the log that are whole records.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends records with one write and one fsync. A failed fsync poisons the log for good.
    pub(crate) fn append_many(&mut self, recs: &[(u8, Vec<u8>)]) -> Result<u64> {
        if let Some(p) = &self.poisoned {
            return Err(Error::Poisoned(p.clone()));
        }
        let mut bytes = Vec::new();
        for (ty, p) in recs {
            if p.len() > self.payload_max {
                return Err(Error::LimitExceeded { what: "log record bytes", actual: p.len() as u64, max: self.payload_max as u64 });
            }
            frame(*ty, p, &mut bytes);
        }
        let at = self.len;
        self.file.write_at(&bytes, at).map_err(|e| Error::io("append log", &self.path, e))?;
        if let Err(e) = self.file.sync_data() {
            self.poisoned = Some(format!("fsync of {} failed: {e}", self.path.display()));
            return Err(Error::fsync("fsync log", &self.path, e));
        }
        self.len += bytes.len() as u64;
        Ok(at)
    }

    /// Appends one record; returns its offset.
    pub(crate) fn append(&mut self, ty: u8, payload: Vec<u8>) -> Result<u64> {
        self.append_many(&[(ty, payload)])
    }

    /// Whether an earlier fsync failed.
    pub(crate) fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }
}
