//! Writing one open segment: records are encrypted into a per-stream batch buffer and handed to
//! the OS in large writes; durability comes from the store's group commit.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::io::{Vfs, VfsFile};
use crate::keys::{DataKey, SegmentCipher};
use crate::segment::format::{
    aad, finish_record, nonce, Codec, Footer, KeyframeEntry, RecordHeader, RecordKind, SegmentHeader, FLAG_KEY, FLAG_PTS, HEADER_LEN,
    KEYFRAMES_PER_SEGMENT_MAX, RECORDS_PER_SEGMENT_MAX, RECORD_HEADER_LEN, TAG_LEN,
};
use crate::segment::format::{le_i64, le_u32, le_u64};
use crate::{Error, Result, SegmentId};

/// Bytes buffered per stream before they are handed to the OS in one write. 256 KiB turns a
/// 4 Mbit/s stream's ~20 KB frames into one write every ~0.5 s (the measured many-file pattern
/// runs at 256 KiB-1 MiB writes) while keeping 1,000 streams under 256 MiB of buffers.
pub const WRITE_BATCH_BYTES: usize = 256 << 10;

/// Buffer capacity a stream keeps between writes. 4 MiB holds a 4K I-frame without
/// reallocating every GOP; a larger frame's buffer is released after it is written.
pub const BUFFER_KEEP_BYTES_MAX: usize = 4 << 20;

/// A stream's buffer may hold this much while the disk is full before appends are refused.
pub const NO_SPACE_BUFFER_BYTES_MAX: usize = 4 << 20;

/// Sidecar key-frame index entry (FORMAT.md "Key-frame sidecar").
pub(crate) const KFI_ENTRY_LEN: usize = 48;

/// A key frame of an open segment with what recovery needs to resume a scan at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KfiEntry {
    pub ordinal: u32,
    pub frames_before: u32,
    pub payload_bytes_before: u64,
    pub key: KeyframeEntry,
    /// End of the key frame's record: it may enter the sidecar once this much is durable.
    pub end: u64,
}

impl KfiEntry {
    pub(crate) fn encode(&self) -> [u8; KFI_ENTRY_LEN] {
        let mut b = [0u8; KFI_ENTRY_LEN];
        b[4..8].copy_from_slice(&self.ordinal.to_le_bytes());
        b[8..16].copy_from_slice(&self.key.ts_us.to_le_bytes());
        b[16..24].copy_from_slice(&self.key.offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.key.config_offset.to_le_bytes());
        b[32..36].copy_from_slice(&self.frames_before.to_le_bytes());
        b[40..48].copy_from_slice(&self.payload_bytes_before.to_le_bytes());
        let crc = crc32fast::hash(&b[4..]);
        b[..4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<KfiEntry> {
        if b.len() != KFI_ENTRY_LEN || crc32fast::hash(&b[4..]) != le_u32(b, 0) {
            return None;
        }
        let key = KeyframeEntry { ts_us: le_i64(b, 8), offset: le_u64(b, 16), config_offset: le_u64(b, 24) };
        Some(KfiEntry { ordinal: le_u32(b, 4), frames_before: le_u32(b, 32), payload_bytes_before: le_u64(b, 40), key, end: 0 })
    }
}

/// What readers may see of an open segment: only what is durable.
#[derive(Debug, Default)]
pub(crate) struct OpenViewState {
    pub durable_len: u64,
    pub keyframes: Vec<KeyframeEntry>,
    /// Timestamp of the last frame inside `durable_len`.
    pub durable_last_ts: Option<i64>,
    pub first_ts: Option<i64>,
}

/// Shared between the writer and readers.
pub(crate) type OpenView = Arc<Mutex<OpenViewState>>;

/// Handed from [`SegmentWriter::prepare_sync`] to the fsync done outside the stream lock.
pub(crate) struct SyncTicket {
    pub segment: SegmentId,
    pub file: Arc<dyn VfsFile>,
    pub path: PathBuf,
    pub len: u64,
    pub last_ts: Option<i64>,
}

/// The segment a stream is writing.
pub(crate) struct SegmentWriter {
    pub id: SegmentId,
    pub path: PathBuf,
    kfi_path: PathBuf,
    file: Arc<dyn VfsFile>,
    kfi: Arc<dyn VfsFile>,
    kfi_len: u64,
    cipher: SegmentCipher,
    next_ordinal: u32,
    written_len: u64,
    buf: Vec<u8>,
    pub frames: u32,
    pub payload_bytes: u64,
    pub first_ts: Option<i64>,
    pub last_ts: Option<i64>,
    codec: Codec,
    config_offset: u64,
    /// Key frames whose records are not yet known durable (not yet in the sidecar).
    pending_kfi: Vec<KfiEntry>,
    keyframe_count: usize,
    /// Set once the footer is buffered, so a retried seal never writes a second one.
    footer_offset: Option<u64>,
    /// Timestamp of each written-but-not-durable frame's end, for `durable_last_ts`.
    last_ts_at: Vec<(u64, i64)>,
    pub view: OpenView,
}

fn io_err<'a>(op: &'static str, path: &'a std::path::Path) -> impl Fn(std::io::Error) -> Error + 'a {
    move |e| Error::io(op, path, e)
}

impl SegmentWriter {
    /// Creates the segment file and its sidecar. Order: create file, write header, fsync file,
    /// fsync directory (DURABILITY.md "Lifecycle and fsync order"). The caller has already made the data
    /// key and the catalog's Open record durable.
    pub(crate) fn create(vfs: &Arc<dyn Vfs>, dir: &std::path::Path, header: &SegmentHeader, key: &DataKey) -> Result<SegmentWriter> {
        let path = dir.join(segment_file_name(header.segment));
        let kfi_path = dir.join(kfi_file_name(header.segment));
        let file = vfs.create_new(&path).map_err(io_err("create segment", &path))?;
        file.write_at(&header.encode(), 0).map_err(io_err("write segment header", &path))?;
        file.sync_data().map_err(io_err("fsync segment", &path))?;
        let kfi = vfs.create_new(&kfi_path).map_err(io_err("create key-frame sidecar", &kfi_path))?;
        vfs.sync_dir(dir).map_err(io_err("fsync segment directory", dir))?;
        Ok(SegmentWriter {
            id: header.segment,
            path,
            kfi_path,
            file,
            kfi,
            kfi_len: 0,
            cipher: SegmentCipher::new(key),
            next_ordinal: 0,
            written_len: HEADER_LEN as u64,
            buf: Vec::with_capacity(WRITE_BATCH_BYTES),
            frames: 0,
            payload_bytes: 0,
            first_ts: None,
            last_ts: None,
            codec: Codec::H264,
            config_offset: 0,
            pending_kfi: Vec::new(),
            keyframe_count: 0,
            footer_offset: None,
            last_ts_at: Vec::new(),
            view: Arc::new(Mutex::new(OpenViewState { durable_len: HEADER_LEN as u64, ..Default::default() })),
        })
    }

    /// Bytes the segment will occupy once its buffer is written.
    pub(crate) fn len(&self) -> u64 {
        self.written_len + self.buf.len() as u64
    }

    /// Records still allowed before the nonce space or the footer index fills.
    pub(crate) fn is_full(&self) -> bool {
        // Keep one ordinal for the footer.
        self.next_ordinal + 2 >= RECORDS_PER_SEGMENT_MAX || self.keyframe_count >= KEYFRAMES_PER_SEGMENT_MAX
    }

    /// Encrypts and buffers one record; returns its offset.
    fn push(&mut self, kind: RecordKind, flags: u8, codec: Codec, ts_us: i64, pts_90k: i64, payload: &[u8]) -> Result<u64> {
        debug_assert!(!self.is_full() || kind == RecordKind::Footer);
        // On a full disk the buffer keeps what could not be written; past this bound new
        // records are refused (before anything changes) instead of growing it.
        if self.buf.len() >= NO_SPACE_BUFFER_BYTES_MAX {
            self.write_out()?;
        }
        let offset = self.len();
        let ordinal = self.next_ordinal;
        let encrypted = kind != RecordKind::Footer;
        let body_len = payload.len() + if encrypted { TAG_LEN } else { 0 };
        let h = RecordHeader { crc: 0, body_len: body_len as u32, kind, flags, codec, ordinal, ts_us, pts_90k };
        let start = self.buf.len();
        self.buf.resize(start + RECORD_HEADER_LEN, 0);
        h.encode(&mut self.buf[start..]);
        self.buf.extend_from_slice(payload);
        if encrypted {
            let mut hb = [0u8; RECORD_HEADER_LEN];
            hb.copy_from_slice(&self.buf[start..start + RECORD_HEADER_LEN]);
            let body = start + RECORD_HEADER_LEN;
            let tag = self.cipher.seal(&nonce(ordinal), &aad(self.id, &hb), &mut self.buf[body..])?;
            self.buf.extend_from_slice(&tag);
        }
        finish_record(&mut self.buf[start..]);
        self.next_ordinal += 1;
        if self.buf.len() >= WRITE_BATCH_BYTES {
            match self.write_out() {
                // The record is whole in the buffer; it goes out with a later write.
                Err(e) if e.is_no_space() => tracing::warn!(path = %self.path.display(), "disk full: holding the stream's batch in memory"),
                r => r?,
            }
        }
        Ok(offset)
    }

    /// Buffers a codec configuration record; frames after it use it.
    pub(crate) fn push_config(&mut self, codec: Codec, config: &[u8]) -> Result<()> {
        let ts = self.last_ts.unwrap_or(0);
        self.config_offset = self.push(RecordKind::CodecConfig, 0, codec, ts, 0, config)?;
        self.codec = codec;
        Ok(())
    }

    /// Buffers one frame.
    pub(crate) fn push_frame(&mut self, ts_us: i64, pts_90k: Option<i64>, key: bool, payload: &[u8]) -> Result<()> {
        let flags = if key { FLAG_KEY } else { 0 } | if pts_90k.is_some() { FLAG_PTS } else { 0 };
        let ordinal = self.next_ordinal;
        let offset = self.push(RecordKind::Video, flags, self.codec, ts_us, pts_90k.unwrap_or(0), payload)?;
        let end = self.len();
        if key {
            let k = KeyframeEntry { ts_us, offset, config_offset: self.config_offset };
            self.pending_kfi.push(KfiEntry { ordinal, frames_before: self.frames, payload_bytes_before: self.payload_bytes, key: k, end });
            self.keyframe_count += 1;
        }
        self.last_ts_at.push((end, ts_us));
        if self.first_ts.is_none() {
            self.first_ts = Some(ts_us);
            if let Ok(mut v) = self.view.lock() {
                v.first_ts = Some(ts_us);
            }
        }
        self.frames += 1;
        self.payload_bytes += payload.len() as u64;
        self.last_ts = Some(ts_us);
        Ok(())
    }

    /// Hands the buffer to the OS.
    pub(crate) fn write_out(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_at(&self.buf, self.written_len).map_err(io_err("write segment", &self.path))?;
        self.written_len += self.buf.len() as u64;
        self.buf.clear();
        // A 16 MiB frame must not pin 16 MiB per stream for ever; below 4 MiB keep the capacity,
        // since reallocating (and faulting in fresh pages) each GOP costs more than the copy.
        if self.buf.capacity() > BUFFER_KEEP_BYTES_MAX {
            self.buf.shrink_to(WRITE_BATCH_BYTES);
        }
        Ok(())
    }

    /// Writes the buffer out and returns what an fsync outside the lock must cover.
    pub(crate) fn prepare_sync(&mut self) -> Result<SyncTicket> {
        self.write_out()?;
        let last_ts = self.last_ts_at.iter().rev().find(|(end, _)| *end <= self.written_len).map(|&(_, ts)| ts);
        Ok(SyncTicket { segment: self.id, file: self.file.clone(), path: self.path.clone(), len: self.written_len, last_ts })
    }

    /// After the ticket's fsync succeeded: publish the durable length to readers and record the
    /// key frames now durable in the sidecar (written after the fsync, so any sidecar entry that
    /// survives a crash points at durable data).
    pub(crate) fn complete_sync(&mut self, t: &SyncTicket) {
        if t.segment != self.id {
            return;
        }
        let durable: Vec<KfiEntry> = {
            let n = self.pending_kfi.iter().take_while(|k| k.end <= t.len).count();
            self.pending_kfi.drain(..n).collect()
        };
        if !durable.is_empty() {
            let mut bytes = Vec::with_capacity(durable.len() * KFI_ENTRY_LEN);
            for k in &durable {
                bytes.extend_from_slice(&k.encode());
            }
            // The sidecar is a hint: if this write is lost, recovery scans from an earlier point.
            match self.kfi.write_at(&bytes, self.kfi_len) {
                Ok(()) => self.kfi_len += bytes.len() as u64,
                Err(e) => {
                    tracing::warn!(path = %self.kfi_path.display(), error = %e, "key-frame sidecar write failed; recovery will scan more")
                }
            }
        }
        self.last_ts_at.retain(|(end, _)| *end > t.len);
        if let Ok(mut v) = self.view.lock() {
            if t.len > v.durable_len {
                v.durable_len = t.len;
                v.keyframes.extend(durable.iter().map(|k| k.key));
                if t.last_ts.is_some() {
                    v.durable_last_ts = t.last_ts;
                }
            }
        }
    }

    /// Seals: writes the footer and fsyncs. Returns the footer offset, the file length and the
    /// footer. The caller then records the seal in the catalog and removes the sidecar.
    pub(crate) fn seal(&mut self) -> Result<(u64, u64, Footer)> {
        let mut keyframes: Vec<KeyframeEntry> = self.view.lock().map(|v| v.keyframes.clone()).unwrap_or_default();
        keyframes.extend(self.pending_kfi.iter().map(|k| k.key));
        let footer = Footer {
            frame_count: self.frames,
            payload_bytes: self.payload_bytes,
            first_ts_us: self.first_ts.unwrap_or(0),
            last_ts_us: self.last_ts.unwrap_or(0),
            keyframes,
        };
        let footer_offset = match self.footer_offset {
            // A seal that failed on a full disk after buffering its footer: just finish it.
            Some(off) => off,
            None => {
                self.write_out()?;
                let mut body = Vec::with_capacity(32 + 24 * footer.keyframes.len());
                footer.encode(&mut body);
                let off = self.len();
                self.push(RecordKind::Footer, 0, self.codec, footer.last_ts_us, 0, &body)?;
                self.footer_offset = Some(off);
                off
            }
        };
        self.write_out()?;
        self.file.sync_data().map_err(|e| Error::fsync("fsync segment at seal", &self.path, e))?;
        let file_len = self.written_len;
        // Readers keep seeing the frames until the index entry flips to sealed.
        if let Ok(mut v) = self.view.lock() {
            v.durable_len = footer_offset;
            v.keyframes = footer.keyframes.clone();
            v.durable_last_ts = self.last_ts;
        }
        Ok((footer_offset, file_len, footer))
    }

    /// The sidecar's path, removed once the seal is in the catalog.
    pub(crate) fn kfi_path(&self) -> &std::path::Path {
        &self.kfi_path
    }
}

/// `<segment id as 16 hex digits>.seg`
pub(crate) fn segment_file_name(id: SegmentId) -> String {
    format!("{:016x}.seg", id.0)
}

/// `<segment id as 16 hex digits>.kfi`
pub(crate) fn kfi_file_name(id: SegmentId) -> String {
    format!("{:016x}.kfi", id.0)
}
