//! An append-only, CRC-framed, fsynced record log: the shared shape of the catalog, the control
//! log (retention and holds) and the audit log. Layout in DESIGN.md "Record logs".

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

impl RecordLog {
    /// Opens (creating if needed) `dir/name` with `magic`, calling `on_record(offset, type,
    /// payload)` for each record in order. A torn last record (no longer than one record) is
    /// cut; damage with more after it is corruption and refuses to open.
    pub(crate) fn open(
        vfs: &Arc<dyn Vfs>,
        dir: &Path,
        name: &str,
        magic: &[u8; 8],
        payload_max: usize,
        mut on_record: impl FnMut(u64, u8, &[u8]) -> Result<()>,
    ) -> Result<RecordLog> {
        vfs.create_dir_all(dir).map_err(|e| Error::io("create log directory", dir, e))?;
        let path = dir.join(name);
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
        let file = vfs.open(&path).map_err(|e| Error::io("open log", &path, e))?;
        let file_len = file.len().map_err(|e| Error::io("stat log", &path, e))?;
        let mut h = [0u8; HEADER_LEN];
        if read_up_to(file.as_ref(), &mut h, 0).map_err(|e| Error::io("read log", &path, e))? != HEADER_LEN
            || &h[..8] != magic
            || crc32fast::hash(&h[..H_CRC]) != le_u32(&h, H_CRC)
        {
            return Err(Error::Corrupt { path, offset: Some(0), detail: "log header fails its check".into() });
        }
        let record_max = FRAME_LEN + payload_max;
        let mut pos = HEADER_LEN as u64;
        let mut buf = vec![0u8; REPLAY_CHUNK_BYTES.max(2 * record_max)];
        let mut buf_start = pos;
        let mut buf_len = 0usize;
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
                if rest > record_max as u64 {
                    return Err(Error::Corrupt {
                        path,
                        offset: Some(pos),
                        detail: format!("record at {pos} fails its check with {rest} bytes after it"),
                    });
                }
                tracing::warn!(path = %path.display(), offset = pos, bytes = rest, "cutting torn log tail");
                file.set_len(pos).and_then(|_| file.sync_data()).map_err(|e| Error::io("truncate log", &path, e))?;
                break;
            }
            on_record(pos, avail[8], &avail[FRAME_LEN..FRAME_LEN + plen])?;
            pos += (FRAME_LEN + plen) as u64;
        }
        Ok(RecordLog { path, file, len: pos, poisoned: None, payload_max })
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
