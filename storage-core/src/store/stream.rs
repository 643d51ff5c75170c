//! A stream: one camera's frames arriving in time order, written into that camera's segments.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::catalog::CatalogRecord;
use crate::segment::format::{SegmentHeader, CODEC_CONFIG_BYTES_MAX, FRAME_BYTES_MAX};
use crate::segment::writer::SegmentWriter;
use crate::store::index::{CameraIndex, EntryState, IndexEntry};
use crate::store::Inner;
use crate::{Codec, Error, FlushPolicy, Result, StoreConfig};

/// A frame to append.
#[derive(Debug, Clone, Copy)]
pub struct FrameIn<'a> {
    /// Capture time, microseconds since the Unix epoch (UTC). Strictly increasing in a stream.
    pub ts_us: i64,
    /// The stream's own 90 kHz presentation timestamp, if the source has one.
    pub pts_90k: Option<i64>,
    /// Whether this is a key frame.
    pub key: bool,
    /// The encoded frame (for example Annex B NAL units). 1..=[`FRAME_BYTES_MAX`] bytes.
    pub payload: &'a [u8],
}

pub(crate) struct StreamState {
    pub seg: Option<SegmentWriter>,
    codec: Codec,
    config: Vec<u8>,
    /// Whether the current segment has the current config written.
    config_written: bool,
    last_ts: Option<i64>,
    /// Sequence number of the last appended frame (0 = none).
    seq: u64,
    /// Sequence number covered by the last started sync.
    synced_seq: u64,
    poisoned: Option<String>,
    closed: bool,
    /// Whether the stream has stored a frame of its own (not only acknowledged re-sent ones):
    /// from then on it may not overlap stored video.
    stored_new: bool,
}

/// Shared between the writer handle and the store's flusher.
pub(crate) struct StreamShared {
    pub id: u64,
    pub camera: String,
    /// The camera's index, looked up once: entries of the store's camera map are never
    /// removed, and each append would otherwise hash the camera id under the map's lock.
    index: Arc<Mutex<CameraIndex>>,
    pub state: Mutex<StreamState>,
    durable_seq: Mutex<u64>,
    durable_cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock().map_err(|_| Error::Poisoned("a thread panicked while holding a stream lock".into()))
}

impl StreamShared {
    pub(crate) fn new(id: u64, camera: String, index: Arc<Mutex<CameraIndex>>, codec: Codec, config: Vec<u8>) -> Self {
        let state = StreamState {
            seg: None,
            codec,
            config,
            config_written: false,
            last_ts: None,
            seq: 0,
            synced_seq: 0,
            poisoned: None,
            closed: false,
            stored_new: false,
        };
        StreamShared { id, camera, index, state: Mutex::new(state), durable_seq: Mutex::new(0), durable_cv: Condvar::new() }
    }

    fn publish_durable(&self, seq: u64) {
        if let Ok(mut d) = self.durable_seq.lock() {
            if seq > *d {
                *d = seq;
                self.durable_cv.notify_all();
            }
        }
    }

    pub(crate) fn durable_seq(&self) -> u64 {
        self.durable_seq.lock().map(|d| *d).unwrap_or(0)
    }

    /// Group-commit step: write the stream's buffer, fsync outside the state lock, publish.
    pub(crate) fn sync(&self, inner: &Inner) -> Result<()> {
        let (ticket, seq) = {
            let mut st = lock(&self.state)?;
            if let Some(p) = &st.poisoned {
                return Err(Error::Poisoned(p.clone()));
            }
            // A closed stream writes nothing more: one that ended unsealed has given up the
            // time of what it never made durable (`release_unwritten`).
            if st.seq == st.synced_seq || st.closed {
                return Ok(());
            }
            let seq = st.seq;
            let Some(seg) = st.seg.as_mut() else {
                return Ok(());
            };
            let ticket = match seg.prepare_sync() {
                Ok(t) => t,
                Err(e) => {
                    if e.is_no_space() {
                        inner.set_no_space(true);
                    }
                    poison(&mut st, &e);
                    return Err(e);
                }
            };
            st.synced_seq = seq;
            (ticket, seq)
        };
        if let Err(e) = ticket.file.sync_data() {
            let err = Error::fsync("fsync segment", &ticket.path, e);
            let mut st = lock(&self.state)?;
            poison(&mut st, &err);
            inner.metrics.fsync_failures.fetch_add(1, Ordering::Relaxed);
            return Err(err);
        }
        {
            let mut st = lock(&self.state)?;
            // An fsync that finishes after the stream ended unsealed publishes nothing to
            // readers: its segment was let go, and the time it held given up.
            if st.closed && st.seg.is_none() {
                return Ok(());
            }
            if let Some(seg) = st.seg.as_mut() {
                seg.complete_sync(&ticket);
            }
        }
        if inner.no_space.load(std::sync::atomic::Ordering::Relaxed) {
            inner.set_no_space(false);
        }
        self.publish_durable(seq);
        inner.notify_durable();
        Ok(())
    }

    /// A stream that ends without a seal (poisoned, or its disk full) claims in the index only
    /// what is durable: the frames past it were never acknowledged, so a publisher re-sends
    /// them on a new stream, which must not find the time taken (DURABILITY.md "Resumable
    /// publishing"). The segment stays open for recovery at the next open.
    fn release_unwritten(&self, st: &StreamState) {
        let Some(seg) = st.seg.as_ref() else { return };
        let Some(first) = seg.first_ts else { return };
        let durable_last = seg.view.lock().ok().and_then(|v| v.durable_last_ts);
        if let Ok(mut idx) = self.index.lock() {
            match durable_last {
                Some(t) => {
                    if let Some(e) = idx.find_mut(first, seg.id) {
                        e.last_ts_us = t;
                    }
                }
                None => {
                    if idx.segments.get(&first).is_some_and(|e| e.id == seg.id) {
                        idx.segments.remove(&first);
                    }
                }
            }
        }
    }

    /// Seals the current segment: footer + fsync, catalog Sealed, index flip, sidecar removal.
    fn seal_current(&self, inner: &Inner, st: &mut StreamState) -> Result<()> {
        let Some(mut seg) = st.seg.take() else {
            return Ok(());
        };
        st.config_written = false;
        if seg.frames == 0 {
            // Nothing was ever indexed in it: drop it (catalog first, then the files).
            inner.drop_segment(&self.camera, seg.id, &[seg.path.clone(), seg.kfi_path().to_path_buf()])?;
            return Ok(());
        }
        let (footer_offset, file_len, footer) = match seg.seal() {
            Ok(r) => r,
            Err(e) => {
                // Keep the writer: a full disk is retried later (the footer is buffered once);
                // any other failure poisons the stream and recovery seals it at the next open.
                st.seg = Some(seg);
                return Err(e);
            }
        };
        let info = crate::catalog::SealedInfo {
            first_ts_us: footer.first_ts_us,
            last_ts_us: footer.last_ts_us,
            frame_count: footer.frame_count,
            keyframe_count: footer.keyframes.len() as u32,
            footer_offset,
            file_len,
            payload_bytes: footer.payload_bytes,
            sealed_us: inner.clock.now_us(),
        };
        st.config_written = false;
        inner.catalog_append(&CatalogRecord::Sealed { segment: seg.id, info })?;
        {
            let mut idx = lock(&self.index)?;
            if let Some(e) = idx.find_mut(info.first_ts_us, seg.id) {
                e.last_ts_us = info.last_ts_us;
                e.state = EntryState::Sealed(info);
            }
        }
        // The sidecar is only a recovery hint; a crash before this unlink leaves a small file
        // that the next recovery of nothing ignores.
        if let Err(e) = inner.vfs.remove_file(seg.kfi_path()) {
            tracing::warn!(path = %seg.kfi_path().display(), error = %e, "could not remove key-frame sidecar");
        }
        inner.metrics.segments_sealed.fetch_add(1, Ordering::Relaxed);
        self.publish_durable(st.seq);
        st.synced_seq = st.seq;
        inner.notify_durable();
        Ok(())
    }
}

/// Whether a frame must go to a new segment: a gap, the duration (at a key frame), the size
/// cap, or the record limits of the open one.
fn rolls(st: &StreamState, cfg: &StoreConfig, ts_us: i64, key: bool, payload_bytes: usize) -> bool {
    st.seg.as_ref().is_some_and(|s| {
        let first = s.first_ts.unwrap_or(ts_us);
        let gap = s.last_ts.is_some_and(|l| ts_us.saturating_sub(l) > cfg.gap_us);
        let long = key && ts_us.saturating_sub(first) >= cfg.segment_duration_us;
        let big = s.frames > 0 && s.len() + payload_bytes as u64 + 64 > cfg.segment_bytes_max;
        gap || long || big || s.is_full()
    })
}

fn poison(st: &mut StreamState, e: &Error) {
    if e.is_no_space() {
        // A full disk refuses writes loudly but poisons nothing: no fsync failed, and the
        // unwritten bytes are still in the buffer. The next append or flush tries again.
        return;
    }
    tracing::error!(error = %e, "stream poisoned: refusing further writes");
    st.poisoned.get_or_insert_with(|| e.to_string());
}

/// What a stream's capture times are checked against (DURABILITY.md "Capture time and arrival").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StreamKind {
    /// Video as it is recorded: capture times within [`crate::StoreConfig::capture_skew_us`]
    /// of the store's clock, either way.
    #[default]
    Live,
    /// Footage recorded earlier (an edge buffer forwarded after an outage, a camera's SD
    /// card): capture times from [`crate::CAPTURE_TIME_MIN_US`] up to the skew bound ahead.
    Backfill,
}

/// A handle for appending one stream of one camera. Dropping it seals the open segment.
pub struct StreamWriter {
    pub(crate) inner: Arc<Inner>,
    pub(crate) shared: Arc<StreamShared>,
    pub(crate) kind: StreamKind,
    /// Stored frames that re-sent ones are compared with, from the first re-sent frame on.
    pub(crate) resume: Option<std::iter::Peekable<crate::store::FrameReader>>,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter").field("camera", &self.shared.camera).field("id", &self.shared.id).finish()
    }
}

impl StreamWriter {
    /// The camera this stream writes.
    pub fn camera(&self) -> &str {
        &self.shared.camera
    }

    /// Sets the codec and its configuration (parameter sets) for the frames that follow.
    pub fn set_codec_config(&mut self, codec: Codec, config: &[u8]) -> Result<()> {
        check_config(config)?;
        let mut st = lock(&self.shared.state)?;
        check_writable(&st)?;
        st.codec = codec;
        st.config = config.to_vec();
        st.config_written = false;
        Ok(())
    }

    /// Appends a frame. Returns its sequence number in this stream (1, 2, ...); it is durable
    /// once [`StreamWriter::durable_seq`] reaches it. Rejections leave stored data untouched,
    /// and a refused frame never extends a segment's time range.
    ///
    /// Resuming (DURABILITY.md "Resumable publishing"): before a stream's first new frame, a frame
    /// identical to one stored (same capture time, key flag and bytes) is counted and
    /// acknowledged without being stored again, so a publisher that lost its acknowledgements
    /// may re-send from its last durable frame. Different bytes at a stored time are refused
    /// ([`Error::Overlap`]).
    pub fn append(&mut self, frame: FrameIn<'_>) -> Result<u64> {
        let inner = &self.inner;
        check_capture_time(&self.shared.camera, self.kind, frame.ts_us, inner.clock.now_us(), inner.config.capture_skew_us)?;
        if frame.payload.is_empty() {
            return Err(Error::InvalidArgument("frame payload is empty".into()));
        }
        if frame.payload.len() > FRAME_BYTES_MAX {
            return Err(Error::LimitExceeded { what: "frame bytes", actual: frame.payload.len() as u64, max: FRAME_BYTES_MAX as u64 });
        }
        let mut st = lock(&self.shared.state)?;
        check_writable(&st)?;
        if let Some(last) = st.last_ts {
            if frame.ts_us <= last {
                return Err(Error::OutOfOrder { camera: self.shared.camera.clone(), ts_us: frame.ts_us, last_ts_us: last });
            }
        }
        let cfg = &inner.config;
        if rolls(&st, cfg, frame.ts_us, frame.key, frame.payload.len()) {
            self.shared.seal_current(inner, &mut st).inspect_err(|e| poison(&mut st, e))?;
        }
        let own = st.seg.as_ref().filter(|s| s.frames > 0).map(|s| s.id);
        let idx = &self.shared.index;
        if st.seg.is_none() {
            // Refuse overlap before creating anything (the check is repeated atomically with
            // the reservation below).
            let hit = lock(idx)?.collision(own, st.last_ts, frame.ts_us).map(|e| overlap(&self.shared.camera, frame.ts_us, e));
            if let Some(refusal) = hit {
                return resend(inner, &self.shared, &mut st, &mut self.resume, &frame, refusal);
            }
            inner.check_writable()?;
            let seg = inner.create_segment(&self.shared.camera).inspect_err(|e| {
                if !e.is_no_space() {
                    poison(&mut st, e)
                }
            })?;
            st.seg = Some(seg);
        }
        let last_ts = st.last_ts;
        let Some(seg) = st.seg.as_mut() else {
            return Err(Error::Closed);
        };
        let seg_last_ts = seg.last_ts;
        // Reserve the range in the index atomically with the check, before the frame is buffered.
        {
            let mut idx = lock(idx)?;
            if let Some(e) = idx.collision(own, last_ts, frame.ts_us) {
                let refusal = overlap(&self.shared.camera, frame.ts_us, e);
                drop(idx);
                return resend(inner, &self.shared, &mut st, &mut self.resume, &frame, refusal);
            }
            match own {
                Some(id) => {
                    let first = seg.first_ts.unwrap_or(frame.ts_us);
                    if let Some(e) = idx.find_mut(first, id) {
                        e.last_ts_us = frame.ts_us;
                    }
                }
                None => {
                    let entry = IndexEntry {
                        id: seg.id,
                        first_ts_us: frame.ts_us,
                        last_ts_us: frame.ts_us,
                        state: EntryState::Open { view: seg.view.clone() },
                    };
                    idx.segments.insert(frame.ts_us, entry);
                }
            }
        }
        let res = (|| {
            if !st.config_written {
                let (codec, config) = (st.codec, std::mem::take(&mut st.config));
                let r = st.seg.as_mut().map(|s| s.push_config(codec, &config));
                st.config = config;
                r.transpose()?;
                st.config_written = true;
            }
            if let Some(s) = st.seg.as_mut() {
                s.push_frame(frame.ts_us, frame.pts_90k, frame.key, frame.payload)?;
            }
            Ok::<(), Error>(())
        })();
        if let Err(e) = res {
            // The reservation goes: a refused frame never extends the segment's time range.
            if let Ok(mut idx) = lock(idx) {
                let seg_id = st.seg.as_ref().map(|s| s.id);
                match (own, seg_last_ts) {
                    (Some(id), Some(prev)) => {
                        let first = st.seg.as_ref().and_then(|s| s.first_ts).unwrap_or(frame.ts_us);
                        if let Some(e) = idx.find_mut(first, id) {
                            e.last_ts_us = prev;
                        }
                    }
                    _ => {
                        if idx.segments.get(&frame.ts_us).is_some_and(|e| Some(e.id) == seg_id) {
                            idx.segments.remove(&frame.ts_us);
                        }
                    }
                }
            }
            if e.is_no_space() {
                // Refused before the buffer changed (see NO_SPACE_BUFFER_BYTES_MAX).
                inner.set_no_space(true);
            }
            // Otherwise the segment's buffer may hold a partial record: never write to it again.
            poison(&mut st, &e);
            return Err(e);
        }
        st.last_ts = Some(frame.ts_us);
        st.stored_new = true;
        st.seq += 1;
        let seq = st.seq;
        inner.metrics.frames_appended.fetch_add(1, Ordering::Relaxed);
        inner.metrics.payload_bytes_appended.fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
        if cfg.flush == FlushPolicy::EveryKeyFrame && frame.key && seq > 1 {
            drop(st);
            self.shared.sync(inner)?;
        }
        Ok(seq)
    }

    /// Whether appending this frame now may wait for the disk: it would create a segment, seal
    /// the current one (a gap, the duration reached at a key frame, the size or record limits),
    /// or fsync (per-key-frame policy). Otherwise [`StreamWriter::append`] encrypts into memory
    /// and at most writes one buffer to the page cache. For callers on an async runtime, which
    /// must move only the appends that may wait off their worker threads.
    pub fn append_may_wait(&self, ts_us: i64, key: bool, payload_bytes: usize) -> bool {
        let Ok(st) = lock(&self.shared.state) else { return true };
        let cfg = &self.inner.config;
        st.seg.is_none() || rolls(&st, cfg, ts_us, key, payload_bytes) || (cfg.flush == FlushPolicy::EveryKeyFrame && key)
    }

    /// Highest sequence number known durable.
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq()
    }

    /// Waits until `seq` is durable or `timeout` passes; true when durable.
    pub fn wait_durable(&self, seq: u64, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut d = lock(&self.shared.durable_seq)?;
        while *d < seq {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            d = self.shared.durable_cv.wait_timeout(d, deadline - now).map_err(|_| Error::Poisoned("durable lock".into()))?.0;
        }
        Ok(true)
    }

    /// Writes and fsyncs everything appended so far; returns the durable sequence number.
    pub fn flush(&self) -> Result<u64> {
        self.shared.sync(&self.inner)?;
        Ok(self.durable_seq())
    }

    /// Seals the open segment and closes the stream; everything appended becomes durable.
    pub fn close(mut self) -> Result<()> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<()> {
        let mut st = lock(&self.shared.state)?;
        if st.closed {
            return Ok(());
        }
        st.closed = true;
        self.inner.unregister_stream(self.shared.id);
        let sealed = match &st.poisoned {
            Some(p) => Err(Error::Poisoned(p.clone())),
            None => self.shared.seal_current(&self.inner, &mut st).inspect_err(|e| poison(&mut st, e)),
        };
        if sealed.is_err() {
            self.shared.release_unwritten(&st);
            // Let the segment go: nothing more is written to it, and an fsync in flight does
            // not make more of it visible. Recovery seals it at the next open.
            st.seg = None;
        }
        sealed
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if let Err(e) = self.close_inner() {
            tracing::warn!(camera = %self.shared.camera, error = %e, "stream dropped without a clean seal; recovery will seal it");
        }
    }
}

fn check_writable(st: &StreamState) -> Result<()> {
    if let Some(p) = &st.poisoned {
        return Err(Error::Poisoned(p.clone()));
    }
    if st.closed {
        return Err(Error::Closed);
    }
    Ok(())
}

pub(crate) fn check_config(config: &[u8]) -> Result<()> {
    if config.len() > CODEC_CONFIG_BYTES_MAX {
        return Err(Error::LimitExceeded {
            what: "codec configuration bytes",
            actual: config.len() as u64,
            max: CODEC_CONFIG_BYTES_MAX as u64,
        });
    }
    Ok(())
}

fn overlap(camera: &str, ts_us: i64, e: &IndexEntry) -> Error {
    Error::Overlap { camera: camera.to_string(), ts_us, segment: e.id, first_ts_us: e.first_ts_us, last_ts_us: e.last_ts_us }
}

/// Header for a new segment.
pub(crate) fn new_header(segment: crate::SegmentId, camera: &str, created_us: i64) -> SegmentHeader {
    SegmentHeader { segment, created_us, camera: camera.to_string() }
}

/// Refuses a frame whose capture time the store cannot trust (DURABILITY.md "Capture time and
/// arrival"); the message names the bound.
fn check_capture_time(camera: &str, kind: StreamKind, ts_us: i64, now_us: i64, skew_us: i64) -> Result<()> {
    let refuse = |reason: String| Err(Error::CaptureTime { camera: camera.to_string(), ts_us, store_now_us: now_us, reason });
    let secs = |us: i64| us as f64 / 1e6;
    if ts_us < crate::CAPTURE_TIME_MIN_US {
        return refuse(format!(
            "is before 2000-01-01T00:00:00Z ({} us), the earliest capture time the store takes: the camera's clock is not set",
            crate::CAPTURE_TIME_MIN_US
        ));
    }
    let ahead = ts_us.saturating_sub(now_us);
    if ahead > skew_us {
        return refuse(format!(
            "is {:.3} s ahead of the store's clock ({now_us} us); no frame may be more than {:.0} s ahead \
             (StoreConfig::capture_skew_us): the camera's clock is wrong",
            secs(ahead),
            secs(skew_us)
        ));
    }
    let behind = now_us.saturating_sub(ts_us);
    if kind == StreamKind::Live && behind > skew_us {
        return refuse(format!(
            "is {:.3} s behind the store's clock ({now_us} us); a live stream's frames may be at most {:.0} s behind \
             (StoreConfig::capture_skew_us): open the stream as a backfill for footage recorded earlier, or set the \
             camera's clock",
            secs(behind),
            secs(skew_us)
        ));
    }
    Ok(())
}

/// A frame at a time the camera already has stored video for: acknowledged without storing it
/// again when it is the very frame stored there and the stream has not stored a new frame yet
/// (a publisher resuming from its last durable frame), refused with `refusal` otherwise.
fn resend(
    inner: &Arc<Inner>,
    shared: &StreamShared,
    st: &mut StreamState,
    resume: &mut Option<std::iter::Peekable<crate::store::FrameReader>>,
    frame: &FrameIn<'_>,
    refusal: Error,
) -> Result<u64> {
    if st.stored_new {
        return Err(refusal);
    }
    // The reader sees what was durable when it was made: a frame past it (made durable since,
    // by another stream still finishing) is looked for again in a fresh reader.
    let mut same = resume.as_mut().is_some_and(|r| stored_frame_is(r, frame));
    if !same {
        let mut fresh = crate::store::read_frames(inner, &shared.camera, frame.ts_us, i64::MAX)?.peekable();
        same = stored_frame_is(&mut fresh, frame);
        *resume = Some(fresh);
    }
    if !same {
        return Err(refusal);
    }
    st.last_ts = Some(frame.ts_us);
    st.seq += 1;
    let seq = st.seq;
    // Stored already, so durable already: published at once when nothing of this stream
    // waits for an fsync, else with the fsync that covers what does.
    if st.synced_seq + 1 == seq && shared.durable_seq() + 1 == seq {
        st.synced_seq = seq;
        shared.publish_durable(seq);
    }
    inner.metrics.frames_resent.fetch_add(1, Ordering::Relaxed);
    Ok(seq)
}

/// Advances `stored` to `frame`'s capture time; true when the frame stored there is `frame`
/// (same time, key flag and bytes), which is then consumed.
fn stored_frame_is(stored: &mut std::iter::Peekable<crate::store::FrameReader>, frame: &FrameIn<'_>) -> bool {
    while let Some(item) = stored.peek() {
        match item {
            Ok(crate::ReadItem::Frame(f)) if f.ts_us < frame.ts_us => {}
            Ok(crate::ReadItem::Frame(f)) => {
                let same = f.ts_us == frame.ts_us && f.key == frame.key && f.payload[..] == *frame.payload;
                if same {
                    stored.next();
                }
                return same;
            }
            Ok(crate::ReadItem::Config(_)) => {}
            Err(_) => return false,
        }
        stored.next();
    }
    false
}
