//! Crash recovery at open (DURABILITY.md "Lifecycle and fsync order").

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::catalog::{CatalogEntry, CatalogRecord, SealedInfo};
use crate::io::{read_exact_at, read_up_to};
use crate::segment::format::{
    footer_record, Codec, Footer, KeyframeEntry, RecordKind, SegmentHeader, HEADER_LEN, KEYFRAMES_PER_SEGMENT_MAX, RECORDS_PER_SEGMENT_MAX,
    RECORD_HEADER_LEN, TAG_LEN,
};
use crate::segment::reader::{read_footer, RecordCursor, Stop};
use crate::segment::writer::{kfi_file_name, segment_file_name, KfiEntry, KFI_ENTRY_LEN};
use crate::store::index::{EntryState, IndexEntry};
use crate::store::Inner;
use crate::{Error, Result, SegmentId};

/// Rebuilds the index from the catalog, recovering every segment the catalog says is open.
pub(crate) fn recover(inner: &Arc<Inner>, entries: BTreeMap<SegmentId, CatalogEntry>) -> Result<()> {
    let mut recovered = 0usize;
    let starts = segment_starts(inner, &entries);
    for (id, e) in entries {
        let info = match e.sealed {
            Some(info) => Some(info),
            None => {
                recovered += 1;
                // A segment left open by a stream whose writes failed may hold, past what was
                // durable, frames its publisher never had acknowledged and re-sent on a later
                // stream: the camera's next segment (by time) ends it (DURABILITY.md "Resumable
                // publishing").
                let own = starts.get(&e.camera).and_then(|v| v.iter().find(|(s, _)| *s == id).map(|(_, t)| *t));
                // A later segment starting at the same time took all of this one's frames.
                let after = |s: SegmentId, f: i64, t: i64| f > t || (f == t && s > id);
                let next =
                    own.and_then(|t| starts.get(&e.camera)?.iter().filter(|(s, f)| *s != id && after(*s, *f, t)).map(|(_, f)| *f).min());
                recover_segment(inner, id, &e.camera, next)?
            }
        };
        let Some(info) = info else { continue };
        if let Ok(mut d) = inner.camera_dirs.lock() {
            d.insert(e.camera.clone());
        }
        let idx = inner.camera_index(&e.camera);
        let mut idx = idx.lock().map_err(|_| Error::Poisoned("index lock".into()))?;
        let entry = IndexEntry { id, first_ts_us: info.first_ts_us, last_ts_us: info.last_ts_us, state: EntryState::Sealed(info) };
        if let Some(prev) = idx.segments.insert(info.first_ts_us, entry) {
            return Err(Error::Corrupt {
                path: inner.segment_path(&e.camera, id),
                offset: None,
                detail: format!("segments {} and {} of camera {} start at the same time", prev.id.0, id.0, e.camera),
            });
        }
    }
    if recovered > 0 {
        tracing::info!(segments = recovered, "recovered segments left open by an unclean stop");
    }
    Ok(())
}

/// Where a scan starts and what it already knows.
struct Scan {
    ordinal: u32,
    frames: u32,
    payload_bytes: u64,
    config_offset: u64,
    keyframes: Vec<KeyframeEntry>,
    first_ts: Option<i64>,
    last_ts: Option<i64>,
    codec: Codec,
}

/// Recovers one segment left open: cut at the last valid record, append the footer, fsync,
/// catalog Sealed, remove the sidecar. `None` if it held no frame (dropped) or is damaged
/// beyond the torn tail (reported, left for the operator).
fn recover_segment(inner: &Inner, id: SegmentId, camera: &str, next_start_us: Option<i64>) -> Result<Option<SealedInfo>> {
    let dir = inner.seg_root().join(camera);
    let path = dir.join(segment_file_name(id));
    let kfi_path = dir.join(kfi_file_name(id));
    if !inner.vfs.exists(&path) {
        // Crash between the catalog Open and the file's directory entry becoming durable.
        inner.drop_segment(camera, id, &[kfi_path])?;
        return Ok(None);
    }
    let file = inner.vfs.open(&path).map_err(|e| Error::io("open segment", &path, e))?;
    let len = file.len().map_err(|e| Error::io("stat segment", &path, e))?;
    if len < HEADER_LEN as u64 {
        inner.drop_segment(camera, id, &[path, kfi_path])?;
        return Ok(None);
    }
    let mut hb = [0u8; HEADER_LEN];
    read_exact_at(file.as_ref(), &mut hb, 0).map_err(|e| Error::io("read segment header", &path, e))?;
    match SegmentHeader::decode(&hb) {
        Ok(h) if h.segment == id && h.camera == camera => {}
        Ok(_) => {
            inner.report(path, Some(id), Some(0), "segment header names another segment or camera".into());
            return Ok(None);
        }
        Err(detail) if hb.iter().all(|&b| b == 0) => {
            // Header write never became durable: the file holds nothing.
            tracing::warn!(path = %path.display(), %detail, "dropping segment with an unwritten header");
            inner.drop_segment(camera, id, &[path, kfi_path])?;
            return Ok(None);
        }
        Err(detail) => {
            inner.report(path, Some(id), Some(0), detail);
            return Ok(None);
        }
    }

    let mut hints = read_sidecar(inner, &kfi_path, len);
    hints.retain(|k| next_start_us.is_none_or(|n| k.key.ts_us < n));
    let mut scan = Scan {
        ordinal: 0,
        frames: 0,
        payload_bytes: 0,
        config_offset: 0,
        keyframes: Vec::new(),
        first_ts: None,
        last_ts: None,
        codec: Codec::H264,
    };
    let mut pos = HEADER_LEN as u64;
    let mut trusted: Option<u64> = None;
    if let Some((last, earlier)) = hints.split_last() {
        // First frame time and codec come from the segment's first records.
        if let Some((first_ts, codec)) = first_frame(inner, &file, len) {
            scan = Scan {
                ordinal: last.ordinal,
                frames: last.frames_before,
                payload_bytes: last.payload_bytes_before,
                config_offset: last.key.config_offset,
                keyframes: earlier.iter().map(|k| k.key).collect(),
                first_ts: Some(first_ts),
                last_ts: earlier.last().map(|k| k.key.ts_us),
                codec,
            };
            pos = last.key.offset;
            trusted = Some(pos);
        }
    }
    let mut cursor = RecordCursor::new(file.clone(), pos, len);
    let mut footer_at = None;
    // End of the last record taken: a record the scan stops at (out of order, past the next
    // segment's start, another ordinal) is cut with everything after it, never left before
    // the footer where a reader would find it.
    let mut taken_end = pos;
    loop {
        let rec = cursor.next_record().map_err(|e| Error::io("scan segment", &path, e))?;
        let rec = match rec {
            Ok(r) => r,
            Err(Stop::End) => break,
            Err(Stop::Bad { offset, detail }) => {
                if trusted == Some(offset) {
                    inner.report(
                        path.clone(),
                        Some(id),
                        Some(offset),
                        format!("record that was durable is damaged ({detail}); segment sealed before it"),
                    );
                }
                break;
            }
        };
        let h = rec.header;
        if h.ordinal != scan.ordinal {
            break;
        }
        match h.kind {
            RecordKind::Footer => {
                footer_at = Some(rec.offset);
                break;
            }
            RecordKind::CodecConfig => scan.config_offset = rec.offset,
            RecordKind::Video => {
                if scan.last_ts.is_some_and(|l| h.ts_us <= l) || (h.is_key() && scan.keyframes.len() >= KEYFRAMES_PER_SEGMENT_MAX) {
                    break;
                }
                if next_start_us.is_some_and(|n| h.ts_us >= n) {
                    tracing::warn!(
                        path = %path.display(),
                        ts_us = h.ts_us,
                        "recovered segment ends where the camera's next segment starts: the frames after it were never durable"
                    );
                    break;
                }
                if h.is_key() {
                    scan.keyframes.push(KeyframeEntry { ts_us: h.ts_us, offset: rec.offset, config_offset: scan.config_offset });
                }
                scan.frames += 1;
                scan.payload_bytes += (rec.body.len() - TAG_LEN) as u64;
                scan.first_ts.get_or_insert(h.ts_us);
                scan.last_ts = Some(h.ts_us);
            }
        }
        scan.codec = h.codec;
        scan.ordinal += 1;
        taken_end = cursor.pos();
    }
    if let Some(off) = footer_at {
        // Sealed on disk, but the catalog's Sealed record was lost: adopt the footer.
        let file_len = cursor.pos();
        match read_footer(file.as_ref(), off, file_len).map_err(|e| Error::io("read footer", &path, e))? {
            Ok(f) => return finish(inner, camera, id, &path, &kfi_path, &file, len, off, file_len, &f).map(Some),
            Err(detail) => {
                inner.report(path, Some(id), Some(off), detail);
                return Ok(None);
            }
        }
    }
    let end = taken_end;
    if scan.frames == 0 {
        inner.drop_segment(camera, id, &[path, kfi_path])?;
        return Ok(None);
    }
    let footer = Footer {
        frame_count: scan.frames,
        payload_bytes: scan.payload_bytes,
        first_ts_us: scan.first_ts.unwrap_or(0),
        last_ts_us: scan.last_ts.unwrap_or(0),
        keyframes: scan.keyframes,
    };
    if end < len {
        tracing::warn!(path = %path.display(), cut_bytes = len - end, "cutting torn tail of recovered segment");
    }
    let rec = footer_record(scan.ordinal, scan.codec, &footer);
    // Truncate to the last valid record, append the footer, fsync: the segment is sealed for
    // good and its key will never encrypt again.
    (|| {
        file.set_len(end)?;
        file.write_at(&rec, end)?;
        file.sync_data()
    })()
    .map_err(|e| Error::io("seal recovered segment", &path, e))?;
    let file_len = end + rec.len() as u64;
    finish(inner, camera, id, &path, &kfi_path, &file, file_len, end, file_len, &footer).map(Some)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    inner: &Inner,
    _camera: &str,
    id: SegmentId,
    path: &std::path::Path,
    kfi_path: &std::path::Path,
    file: &Arc<dyn crate::io::VfsFile>,
    len: u64,
    footer_offset: u64,
    file_len: u64,
    f: &Footer,
) -> Result<SealedInfo> {
    if len > file_len {
        file.set_len(file_len).and_then(|_| file.sync_data()).map_err(|e| Error::io("truncate segment", path, e))?;
    }
    let info = SealedInfo {
        first_ts_us: f.first_ts_us,
        last_ts_us: f.last_ts_us,
        frame_count: f.frame_count,
        keyframe_count: f.keyframes.len() as u32,
        footer_offset,
        file_len,
        payload_bytes: f.payload_bytes,
        // Recovery seals now: no frame of the segment arrived after this.
        sealed_us: inner.clock.now_us(),
    };
    inner.catalog_append(&CatalogRecord::Sealed { segment: id, info })?;
    if inner.vfs.exists(kfi_path) {
        if let Err(e) = inner.vfs.remove_file(kfi_path) {
            tracing::warn!(path = %kfi_path.display(), error = %e, "could not remove key-frame sidecar");
        }
    }
    Ok(info)
}

/// The sidecar's valid prefix: entries with good CRCs, ascending offsets, inside the file.
fn read_sidecar(inner: &Inner, kfi_path: &std::path::Path, seg_len: u64) -> Vec<KfiEntry> {
    let Ok(f) = inner.vfs.open(kfi_path) else {
        return Vec::new();
    };
    let Ok(len) = f.len() else { return Vec::new() };
    let n = (len / KFI_ENTRY_LEN as u64).min(KEYFRAMES_PER_SEGMENT_MAX as u64) as usize;
    let mut buf = vec![0u8; n * KFI_ENTRY_LEN];
    let Ok(got) = read_up_to(f.as_ref(), &mut buf, 0) else {
        return Vec::new();
    };
    let mut out: Vec<KfiEntry> = Vec::with_capacity(n);
    for chunk in buf[..got - got % KFI_ENTRY_LEN].chunks(KFI_ENTRY_LEN) {
        let Some(e) = KfiEntry::decode(chunk) else {
            break;
        };
        let ascending = out.last().is_none_or(|p| {
            e.key.offset > p.key.offset && e.ordinal > p.ordinal && e.key.ts_us > p.key.ts_us && e.frames_before > p.frames_before
        });
        // What the entry says must be possible in a file of `seg_len` bytes: every record
        // before the key frame is a frame at most and holds at most its own bytes. A sidecar
        // that says otherwise is not trusted (the scan starts earlier instead).
        let possible = e.key.offset >= HEADER_LEN as u64
            && e.key.offset.checked_add(RECORD_HEADER_LEN as u64).is_some_and(|end| end <= seg_len)
            && e.key.config_offset >= HEADER_LEN as u64
            && e.key.config_offset < e.key.offset
            && e.ordinal < RECORDS_PER_SEGMENT_MAX
            && e.frames_before <= e.ordinal
            && e.payload_bytes_before <= e.key.offset;
        if !ascending || !possible {
            break;
        }
        out.push(e);
    }
    out
}

/// Timestamp and codec of the segment's first frame.
fn first_frame(inner: &Inner, file: &Arc<dyn crate::io::VfsFile>, len: u64) -> Option<(i64, Codec)> {
    let _ = inner;
    let mut cursor = RecordCursor::new(file.clone(), HEADER_LEN as u64, len);
    // The first frame follows at most a codec configuration record or two.
    for _ in 0..4 {
        match cursor.next_record() {
            Ok(Ok(r)) if r.header.kind == RecordKind::Video => return Some((r.header.ts_us, r.header.codec)),
            Ok(Ok(_)) => continue,
            _ => return None,
        }
    }
    None
}

/// The first capture time of every segment of each camera: a sealed one's from the catalog, an
/// open one's from its file.
fn segment_starts(inner: &Inner, entries: &BTreeMap<SegmentId, CatalogEntry>) -> BTreeMap<String, Vec<(SegmentId, i64)>> {
    let mut out: BTreeMap<String, Vec<(SegmentId, i64)>> = BTreeMap::new();
    for (id, e) in entries {
        let first = match e.sealed {
            Some(info) => Some(info.first_ts_us),
            None => {
                let path = inner.seg_root().join(&e.camera).join(segment_file_name(*id));
                inner.vfs.open(&path).ok().and_then(|f| {
                    let len = f.len().ok()?;
                    first_frame(inner, &f, len).map(|(ts, _)| ts)
                })
            }
        };
        if let Some(t) = first {
            out.entry(e.camera.clone()).or_default().push((*id, t));
        }
    }
    out
}
