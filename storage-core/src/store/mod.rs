//! The store: the engine's public face. Owns the catalog, the key store, the camera/time index
//! and the group-commit flusher; hands out [`StreamWriter`]s and [`FrameReader`]s.

mod erase;
mod group;
mod index;
mod read;
mod recover;
mod stream;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::thread::JoinHandle;

pub(crate) use erase::DECOMMISSION_MARKER;
pub use erase::{EraseCertificate, SweepReport};
pub use read::{CodecConfig, Frame, FrameReader, ReadItem};
pub use stream::{FrameIn, StreamKind, StreamWriter};

use crate::audit::AuditLog;
use crate::catalog::{Catalog, CatalogRecord, SealedInfo};
use crate::clock::{Clock, SystemClock};
use crate::io::{StdVfs, Vfs};
use crate::keys::{DataKey, FileKekProvider, KekProvider, KeyStore};
use crate::retention::ControlState;
use crate::segment::format::{check_camera_id, HEADER_LEN};
use crate::segment::reader::{read_footer, RecordCursor, Stop};
use crate::segment::writer::{segment_file_name, SegmentWriter};
use crate::{Codec, Error, FlushPolicy, Result, SegmentId, StoreConfig};
use index::{CameraIndex, EntryState};
use read::SegmentPlan;
use stream::{check_config, new_header, StreamShared};

/// A damaged structure found on disk, kept for the operator (also logged at error level).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptionReport {
    /// File holding the damage.
    pub path: PathBuf,
    /// Segment, when the file is a segment.
    pub segment: Option<SegmentId>,
    /// Offset of the damaged structure.
    pub offset: Option<u64>,
    /// What is wrong.
    pub detail: String,
    /// When it was found (store clock, microseconds since the epoch).
    pub detected_us: i64,
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Frames accepted by `append`.
    pub frames_appended: AtomicU64,
    /// Payload bytes accepted by `append`.
    pub payload_bytes_appended: AtomicU64,
    /// Frames a resuming publisher re-sent that were stored already: acknowledged, not stored
    /// again.
    pub frames_resent: AtomicU64,
    /// Segments sealed.
    pub segments_sealed: AtomicU64,
    /// Segments created.
    pub segments_created: AtomicU64,
    /// Failed fsyncs (each poisons its writer).
    pub fsync_failures: AtomicU64,
    /// Writes refused because the disk was full.
    pub no_space_refusals: AtomicU64,
    /// Segments crypto-erased.
    pub segments_erased: AtomicU64,
}

/// A recorded stretch or a gap, `[start_us, end_us]` by frame timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Span {
    /// First frame time (or the gap's start).
    pub start_us: i64,
    /// Last frame time (or the gap's end).
    pub end_us: i64,
}

/// What is recorded for a camera in a range, and the gaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recordings {
    /// Contiguous recorded spans, clipped to the query.
    pub spans: Vec<Span>,
    /// The holes between them (and at the ends) inside the query.
    pub gaps: Vec<Span>,
}

/// A segment as the index sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Its id.
    pub id: SegmentId,
    /// First frame time.
    pub first_ts_us: i64,
    /// Last frame time.
    pub last_ts_us: i64,
    /// Summary once sealed; `None` while a stream writes it.
    pub sealed: Option<SealedInfo>,
}

/// A segment creation waiting for the next group commit of keys and Open records.
struct Creation {
    camera: String,
    key: DataKey,
    created_us: i64,
}

pub(crate) struct Inner {
    pub config: StoreConfig,
    pub vfs: Arc<dyn Vfs>,
    pub clock: Arc<dyn Clock>,
    seg_root: PathBuf,
    /// `None` once decommissioned (the key store is gone and must never be recreated).
    pub keys: Mutex<Option<KeyStore>>,
    catalog: Mutex<Catalog>,
    next_segment: AtomicU64,
    cameras: RwLock<HashMap<String, Arc<Mutex<CameraIndex>>>>,
    camera_dirs: Mutex<std::collections::HashSet<String>>,
    streams: Mutex<HashMap<u64, Weak<StreamShared>>>,
    next_stream: AtomicU64,
    corruptions: Mutex<Vec<CorruptionReport>>,
    pub metrics: Metrics,
    shutdown: Mutex<bool>,
    shutdown_cv: Condvar,
    no_space: AtomicBool,
    creations: group::GroupCommit<Creation, SegmentId>,
    /// Single catalog records (Sealed, Dropped) from concurrent callers share fsyncs.
    catalog_appends: group::GroupCommit<CatalogRecord, ()>,
    pub control: Mutex<ControlState>,
    pub audit: Mutex<AuditLog>,
    /// Why the store refuses everything but the audit log: set by a decommission, durable in
    /// its marker files.
    pub decommissioned: Mutex<Option<String>>,
    /// The store's identity.
    pub id: crate::StoreId,
    /// The KEK provider, bound to this store.
    pub kek: Arc<dyn KekProvider>,
    /// Exclusive locks on the root and the key directory, held for the store's life.
    locks: Mutex<Vec<Box<dyn crate::io::VfsLock>>>,
    /// Called each time frames become durable (see [`Store::on_durable`]).
    durable_hooks: RwLock<Vec<DurableHook>>,
}

/// A callback run when frames become durable.
type DurableHook = Box<dyn Fn() + Send + Sync>;

/// Checks every record (CRC and structure, no key needed) and the footer of the sealed
/// segment at `path`: the damage found, `(offset, what)`, at most one in the records and one
/// in the footer.
pub(crate) fn check_sealed_segment(vfs: &Arc<dyn Vfs>, path: &Path, info: &SealedInfo) -> Result<Vec<(Option<u64>, String)>> {
    let file = match vfs.open(path) {
        Ok(f) => f,
        Err(err) => return Ok(vec![(None, format!("segment file cannot be opened: {err}"))]),
    };
    let mut found = Vec::new();
    let mut cursor = RecordCursor::new(file.clone(), HEADER_LEN as u64, info.footer_offset);
    loop {
        match cursor.next_record().map_err(|err| Error::io("scrub segment", path, err))? {
            Ok(_) => {}
            Err(Stop::End) => break,
            Err(Stop::Bad { offset, detail }) => {
                found.push((Some(offset), detail));
                break;
            }
        }
    }
    if let Err(detail) =
        read_footer(file.as_ref(), info.footer_offset, info.file_len).map_err(|err| Error::io("scrub segment", path, err))?
    {
        found.push((Some(info.footer_offset), detail));
    }
    Ok(found)
}

/// Takes the exclusive lock of a store directory, or says who is in the way.
fn take_lock(vfs: &Arc<dyn Vfs>, dir: &Path) -> Result<Box<dyn crate::io::VfsLock>> {
    vfs.create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let path = crate::identity::lock_path(dir);
    vfs.try_lock(&path, crate::io::LockMode::Exclusive).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Error::Locked { path: path.clone(), detail: "a running server or another tool has this store open".into() }
        } else {
            Error::io("lock store directory", &path, e)
        }
    })
}

/// The segment store. Cheap to share: clone the `Arc` it lives in, or share `&Store`.
pub struct Store {
    inner: Arc<Inner>,
    flusher: Option<JoinHandle<()>>,
    sweeper: Option<JoinHandle<()>>,
}

/// What a store runs on: file system, clock, KEK provider.
pub struct Env {
    /// The file system.
    pub vfs: Arc<dyn Vfs>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The KEK provider; `None` uses a [`FileKekProvider`] in `config.kek_dir`.
    pub kek: Option<Arc<dyn KekProvider>>,
}

impl Default for Env {
    fn default() -> Self {
        Env { vfs: Arc::new(StdVfs), clock: Arc::new(SystemClock), kek: None }
    }
}

impl Store {
    /// Opens (or creates) a store on the real file system with the system clock and the file
    /// KEK provider.
    pub fn open(config: StoreConfig) -> Result<Store> {
        Store::open_with(config, Env::default())
    }

    /// Opens a store on `env`. Recovery runs here: segments left open by a crash are cut at
    /// their last valid record, sealed and indexed; startup reads the catalog, not the segments.
    pub fn open_with(config: StoreConfig, env: Env) -> Result<Store> {
        config.validate()?;
        let vfs = env.vfs;
        let now = env.clock.now_us();
        // SECURITY.md "Store identity and locks": lock the root, establish (or, for a new store
        // only, create) the identity, lock the key directory, check key file modes, bind the
        // KEK provider. Until all of that holds nothing is created, rotated or destroyed.
        vfs.create_dir_all(&config.root).map_err(|e| Error::io("create store root", &config.root, e))?;
        let mut locks = vec![take_lock(&vfs, &config.root)?];
        let (id, created) = crate::identity::establish(&vfs, &config.root, &config.key_dir, now)?;
        if created {
            crate::identity::commit_root(&vfs, &config.root, id, now)?;
            tracing::info!(store = %id, root = %config.root.display(), key_dir = %config.key_dir.display(), "created a new store");
        }
        if config.key_dir != config.root {
            locks.push(take_lock(&vfs, &config.key_dir)?);
        }
        crate::identity::check_private_dir(&vfs, &config.key_dir)?;
        let kek: Arc<dyn KekProvider> = match env.kek {
            Some(k) => k,
            None => Arc::new(FileKekProvider::open(vfs.clone(), config.kek_dir.clone())?),
        };
        kek.bind_store(id)?;
        let seg_root = config.root.join("segments");
        vfs.create_dir_all(&seg_root).map_err(|e| Error::io("create segments directory", &seg_root, e))?;
        let marker = erase::read_decommission_marker(&vfs, &config.root, &config.key_dir)?;
        let loaded = Catalog::open(&vfs, &config.root.join("catalog"), crate::log::Access::Write { keep_torn: false })?;
        let keys = match &marker {
            // Never opened again after a decommission: opening would create a new generation
            // under a new KEK.
            Some(_) => None,
            None => Some(KeyStore::open(vfs.clone(), &config.key_dir, kek.clone(), now, loaded.max_segment.is_none())?),
        };
        let signer = crate::signing::load_or_create(&vfs, &config.key_dir)?;
        let (audit, audit_findings) = AuditLog::open(&vfs, &config.root.join("audit"), &config.key_dir, signer)?;
        let control = ControlState::open(&vfs, &config.root.join("control"), config.retention_days_default)?;
        let next = loaded.max_segment.max(keys.as_ref().and_then(|k| k.last_segment())).map_or(1, |s| s.0 + 1);
        let inner = Arc::new(Inner {
            config,
            vfs,
            clock: env.clock,
            seg_root,
            keys: Mutex::new(keys),
            catalog: Mutex::new(loaded.catalog),
            next_segment: AtomicU64::new(next),
            cameras: RwLock::new(HashMap::new()),
            camera_dirs: Mutex::new(Default::default()),
            streams: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(1),
            corruptions: Mutex::new(Vec::new()),
            metrics: Metrics::default(),
            shutdown: Mutex::new(false),
            shutdown_cv: Condvar::new(),
            no_space: AtomicBool::new(false),
            creations: group::GroupCommit::new("segment creation"),
            catalog_appends: group::GroupCommit::new("catalog"),
            control: Mutex::new(control),
            audit: Mutex::new(audit),
            decommissioned: Mutex::new(None),
            id,
            kek,
            locks: Mutex::new(locks),
            durable_hooks: RwLock::new(Vec::new()),
        });
        if let Some(t) = audit_findings.torn {
            // The cut is itself on the record, with what was cut and where its bytes are kept.
            inner.audit_append(crate::audit::AuditRecord {
                actor: "system".into(),
                action: "audit.tail_cut".into(),
                detail: serde_json::json!({
                    "offset": t.offset,
                    "bytes": t.bytes,
                    "sha256": t.sha256_hex,
                    "kept_as": t.kept_as.map(|p| p.display().to_string()),
                    "why": "the log's last write did not complete (a crash during an append); the entry it held was never acknowledged",
                }),
                ..Default::default()
            })?;
        }
        if let Some(m) = marker {
            inner.open_decommissioned(m)?;
            return Ok(Store { inner, flusher: None, sweeper: None });
        }
        recover::recover(&inner, loaded.entries)?;
        inner.resume_erasures()?;
        let flusher = match inner.config.flush {
            FlushPolicy::Interval(period) => Some(spawn_periodic(&inner, "camvault-flusher", period, Cadence::Deadline, |i| {
                if let Err(e) = flush_all(i) {
                    tracing::error!(error = %e, "group commit failed for at least one stream");
                }
            })?),
            _ => None,
        };
        let sweeper = match inner.config.sweep_interval {
            Some(period) => Some(spawn_periodic(&inner, "camvault-sweeper", period, Cadence::Rest, |i| match i.sweep(None, "system") {
                Ok(r) if r.erased() > 0 => tracing::info!(erased = r.erased(), held_back = r.held_back, "retention sweep"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "retention sweep failed; it will run again"),
            })?),
            None => None,
        };
        Ok(Store { inner, flusher, sweeper })
    }

    /// Opens a live stream for `camera` with its codec and configuration (parameter sets, may
    /// be empty if they travel in-band). Several streams of one camera may be open as long as
    /// their frames do not overlap in time. A live stream's capture times must lie within
    /// [`StoreConfig::capture_skew_us`] of the store's clock; see [`Store::open_stream_as`].
    pub fn open_stream(&self, camera: &str, codec: Codec, codec_config: &[u8]) -> Result<StreamWriter> {
        self.open_stream_as(camera, codec, codec_config, StreamKind::Live)
    }

    /// Opens a stream of the given kind: [`StreamKind::Backfill`] for footage recorded
    /// earlier (an edge buffer forwarded after an outage, a camera's SD card), whose capture
    /// times may lie in the past down to [`crate::CAPTURE_TIME_MIN_US`]. Either kind keeps
    /// its video for the retention counted from its arrival as well as its capture.
    pub fn open_stream_as(&self, camera: &str, codec: Codec, codec_config: &[u8], kind: StreamKind) -> Result<StreamWriter> {
        self.inner.check_writable()?;
        check_camera_id(camera)?;
        check_config(codec_config)?;
        let id = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        let index = self.inner.camera_index(camera);
        let shared = Arc::new(StreamShared::new(id, camera.to_string(), index, codec, codec_config.to_vec()));
        {
            let mut streams = self.inner.streams.lock().map_err(|_| Error::Poisoned("stream registry".into()))?;
            streams.retain(|_, w| w.strong_count() > 0);
            if streams.len() >= crate::config::STREAMS_MAX {
                return Err(Error::LimitExceeded {
                    what: "open streams",
                    actual: streams.len() as u64 + 1,
                    max: crate::config::STREAMS_MAX as u64,
                });
            }
            streams.insert(id, Arc::downgrade(&shared));
        }
        Ok(StreamWriter { inner: self.inner.clone(), shared, kind, resume: None })
    }

    /// Group commit now: every open stream's data is written and fsynced.
    pub fn flush(&self) -> Result<()> {
        flush_all(&self.inner)
    }

    /// Segments of `camera` holding frames in `[from_us, to_us)`, oldest first.
    pub fn segments(&self, camera: &str, from_us: i64, to_us: i64) -> Result<Vec<SegmentSummary>> {
        self.inner.check_live()?;
        let idx = self.inner.existing_index(camera)?;
        let idx = idx.lock().map_err(|_| Error::Poisoned("index lock".into()))?;
        Ok(idx
            .covering(from_us, to_us)
            .into_iter()
            .map(|e| SegmentSummary {
                id: e.id,
                first_ts_us: e.first_ts_us,
                last_ts_us: e.last_ts_us,
                sealed: match e.state {
                    EntryState::Sealed(s) => Some(s),
                    EntryState::Open { .. } => None,
                },
            })
            .collect())
    }

    /// Recorded spans and gaps of `camera` in `[from_us, to_us)`. Segments closer than the
    /// configured `gap_us` join into one span.
    pub fn recordings(&self, camera: &str, from_us: i64, to_us: i64) -> Result<Recordings> {
        let segs = match self.segments(camera, from_us, to_us) {
            Ok(s) => s,
            Err(Error::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut spans: Vec<Span> = Vec::new();
        for s in segs {
            let (a, b) = (s.first_ts_us.max(from_us), s.last_ts_us.min(to_us.saturating_sub(1)));
            if a > b {
                continue;
            }
            match spans.last_mut() {
                Some(last) if s.first_ts_us.saturating_sub(last.end_us) <= self.inner.config.gap_us => last.end_us = b,
                _ => spans.push(Span { start_us: a, end_us: b }),
            }
        }
        let mut gaps = Vec::new();
        let mut cursor = from_us;
        for s in &spans {
            if s.start_us > cursor {
                gaps.push(Span { start_us: cursor, end_us: s.start_us });
            }
            cursor = s.end_us;
        }
        if cursor < to_us.saturating_sub(1) && (spans.is_empty() || to_us.saturating_sub(cursor) > self.inner.config.gap_us) {
            gaps.push(Span { start_us: cursor, end_us: to_us });
        }
        Ok(Recordings { spans, gaps })
    }

    /// Frames of `camera` from the key frame at or before `from_us` up to `to_us` (exclusive),
    /// each preceded by the codec configuration in force. Only durable frames are visible.
    pub fn read(&self, camera: &str, from_us: i64, to_us: i64) -> Result<FrameReader> {
        read_frames(&self.inner, camera, from_us, to_us)
    }

    /// Cameras with at least one segment.
    pub fn cameras(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.cameras.read().map(|c| c.keys().cloned().collect()).unwrap_or_default();
        v.sort();
        v
    }

    /// Damage found so far (at open, on reads, by [`Store::scrub`]).
    pub fn corruptions(&self) -> Vec<CorruptionReport> {
        self.inner.corruptions.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Checks every record of every sealed segment (CRC and structure, no key needed); returns
    /// the reports found by this pass (also added to [`Store::corruptions`]).
    pub fn scrub(&self) -> Result<Vec<CorruptionReport>> {
        let cams: Vec<(String, Arc<Mutex<CameraIndex>>)> =
            self.inner.cameras.read().map(|c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
        let mut found = Vec::new();
        for (camera, idx) in cams {
            let entries: Vec<_> = idx.lock().map(|i| i.segments.values().cloned().collect()).unwrap_or_default();
            for e in entries {
                let EntryState::Sealed(info) = e.state else {
                    continue;
                };
                let path = self.inner.segment_path(&camera, e.id);
                for (offset, detail) in check_sealed_segment(&self.inner.vfs, &path, &info)? {
                    found.push(self.inner.report(path.clone(), Some(e.id), offset, detail));
                }
            }
        }
        Ok(found)
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// True while the last attempt to create a segment found the disk full.
    pub fn is_out_of_space(&self) -> bool {
        self.inner.no_space.load(Ordering::Relaxed)
    }

    /// Registers `hook`, called each time frames become durable (a group commit's stream
    /// fsync, a seal). It runs on the store's own threads, so it must not block: a live reader
    /// uses it to wake up and re-read instead of polling.
    pub fn on_durable(&self, hook: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut h) = self.inner.durable_hooks.write() {
            h.push(Box::new(hook));
        }
    }

    /// Abandons the store as a crashed process would: nothing is flushed or sealed, and its
    /// locks are released (as the kernel releases a dead process's). For crash benchmarks.
    #[doc(hidden)]
    pub fn abandon(self) {
        if let Ok(mut l) = self.inner.locks.lock() {
            l.clear();
        }
        std::mem::forget(self);
    }

    /// The store's identity (written at creation into its root, key directory and KEK
    /// provider).
    pub fn id(&self) -> crate::StoreId {
        self.inner.id
    }

    /// The configuration the store runs with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Ok(mut s) = self.inner.shutdown.lock() {
            *s = true;
        }
        self.inner.shutdown_cv.notify_all();
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
        if let Some(h) = self.sweeper.take() {
            let _ = h.join();
        }
        if let Err(e) = flush_all(&self.inner) {
            tracing::error!(error = %e, "final flush at store shutdown failed");
        }
    }
}

/// How a periodic thread spaces its rounds.
#[derive(Debug, Clone, Copy)]
enum Cadence {
    /// `period` of rest between rounds (the retention sweep).
    Rest,
    /// `period` is a bound on how long work may wait for a round (group commit): the wait
    /// before a round is `period` less the longest of the last four rounds, so that a frame
    /// appended just after one round's snapshot is durable about `period` later, not `period`
    /// plus a round's fsyncs. Rounds run back to back once a round takes a whole period: the
    /// disk's limit, where acknowledgements start to lag.
    Deadline,
}

/// Rounds of the last this many are remembered by a [`RoundPacer`].
const PACER_ROUNDS_REMEMBERED: usize = 4;

/// Spaces group-commit rounds so that work waits at most about `period` for one: the wait
/// before a round is `period` less the longest of the last four rounds (see
/// `Cadence::Deadline`). Public so that a baseline can pace its fsyncs exactly as the store's
/// flusher does (`camvault-bench`'s raw baseline).
#[derive(Debug, Clone)]
pub struct RoundPacer {
    period: std::time::Duration,
    recent: [std::time::Duration; PACER_ROUNDS_REMEMBERED],
    rounds: usize,
}

impl RoundPacer {
    /// A pacer for rounds every `period`, with no round run yet.
    pub fn new(period: std::time::Duration) -> Self {
        RoundPacer { period, recent: [std::time::Duration::ZERO; PACER_ROUNDS_REMEMBERED], rounds: 0 }
    }

    /// How long to wait, from the end of the last round, before starting the next.
    pub fn wait(&self) -> std::time::Duration {
        self.period.saturating_sub(self.recent.iter().copied().max().unwrap_or_default())
    }

    /// Records that a round took `took`.
    pub fn finished(&mut self, took: std::time::Duration) {
        self.recent[self.rounds % PACER_ROUNDS_REMEMBERED] = took;
        self.rounds += 1;
    }
}

/// Runs `work` on a named thread, spaced by `period` as `cadence` says, until the store shuts
/// down or is dropped.
fn spawn_periodic(
    inner: &Arc<Inner>,
    name: &str,
    period: std::time::Duration,
    cadence: Cadence,
    work: fn(&Arc<Inner>),
) -> Result<JoinHandle<()>> {
    let weak = Arc::downgrade(inner);
    let mut pacer = RoundPacer::new(period);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            let Some(strong) = weak.upgrade() else { return };
            {
                let wait = match cadence {
                    Cadence::Rest => period,
                    Cadence::Deadline => pacer.wait(),
                };
                let Ok(guard) = strong.shutdown.lock() else { return };
                if *guard {
                    return;
                }
                let Ok((guard, _)) = strong.shutdown_cv.wait_timeout(guard, wait) else { return };
                if *guard {
                    return;
                }
            }
            let started = std::time::Instant::now();
            work(&strong);
            pacer.finished(started.elapsed());
        })
        .map_err(|e| Error::io("spawn thread", PathBuf::from(name), e))
}

/// One group commit over every registered stream, spread over the flusher threads.
fn flush_all(inner: &Arc<Inner>) -> Result<()> {
    let streams: Vec<Arc<StreamShared>> =
        inner.streams.lock().map(|s| s.values().filter_map(|w| w.upgrade()).collect()).unwrap_or_default();
    if streams.is_empty() {
        return Ok(());
    }
    let threads = inner.config.flusher_threads.min(streams.len()).max(1);
    let chunk = streams.len().div_ceil(threads);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for part in streams.chunks(chunk) {
            let first_err = &first_err;
            s.spawn(move || {
                for st in part {
                    if let Err(e) = st.sync(inner) {
                        if let Ok(mut f) = first_err.lock() {
                            f.get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    match first_err.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

impl Inner {
    /// Runs the [`Store::on_durable`] hooks.
    pub(crate) fn notify_durable(&self) {
        if let Ok(hooks) = self.durable_hooks.read() {
            for h in hooks.iter() {
                h();
            }
        }
    }

    pub(crate) fn segment_path(&self, camera: &str, id: SegmentId) -> PathBuf {
        self.seg_root.join(camera).join(segment_file_name(id))
    }

    fn camera_dir(&self, camera: &str) -> PathBuf {
        self.seg_root.join(camera)
    }

    pub(crate) fn camera_index(&self, camera: &str) -> Arc<Mutex<CameraIndex>> {
        if let Some(i) = self.cameras.read().ok().and_then(|c| c.get(camera).cloned()) {
            return i;
        }
        match self.cameras.write() {
            Ok(mut c) => c.entry(camera.to_string()).or_default().clone(),
            Err(_) => Arc::new(Mutex::new(CameraIndex::default())),
        }
    }

    fn existing_index(&self, camera: &str) -> Result<Arc<Mutex<CameraIndex>>> {
        check_camera_id(camera)?;
        self.cameras
            .read()
            .ok()
            .and_then(|c| c.get(camera).cloned())
            .ok_or_else(|| Error::NotFound(format!("camera {camera} has no recordings")))
    }

    /// Appends one record and returns once it is durable, group-committed with every other
    /// record appended at the same time (streams sealing together share one catalog fsync).
    pub(crate) fn catalog_append(&self, rec: &CatalogRecord) -> Result<()> {
        self.catalog_appends.submit(
            rec.clone(),
            |recs| {
                self.catalog.lock().map_err(|_| Error::Poisoned("catalog lock".into()))?.append_many(recs)?;
                Ok(vec![(); recs.len()])
            },
            |no_space, msg| self.commit_failed("append catalog record", &self.config.root.join("catalog"), no_space, msg),
        )
    }

    /// A group commit's failure as each of its callers sees it.
    fn commit_failed(&self, op: &'static str, path: &Path, no_space: bool, msg: String) -> Error {
        if no_space {
            Error::NoSpace { path: path.to_path_buf() }
        } else {
            Error::Io { op, path: path.to_path_buf(), source: std::io::Error::other(msg) }
        }
    }

    /// Refuses every call that writes or reads video, or changes retention, holds or keys,
    /// once the store is decommissioned; the audit log, the hold list and the certificate stay
    /// readable.
    pub(crate) fn check_live(&self) -> Result<()> {
        match self.decommissioned.lock().map_err(|_| Error::Poisoned("decommission state".into()))?.as_ref() {
            Some(why) => Err(Error::Decommissioned(why.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        self.check_live()?;
        if let Ok(c) = self.catalog.lock() {
            if let Some(p) = c.poisoned() {
                return Err(Error::Poisoned(p.to_string()));
            }
        }
        Ok(())
    }

    /// Create: data key (key store, fsynced), catalog Open (fsynced), then the file
    /// (DURABILITY.md "Lifecycle and fsync order").
    pub(crate) fn create_segment(&self, camera: &str) -> Result<SegmentWriter> {
        let res = self.create_segment_inner(camera);
        match &res {
            Err(e) if e.is_no_space() => self.set_no_space(true),
            Ok(_) => self.set_no_space(false),
            Err(_) => {}
        }
        res
    }

    fn create_segment_inner(&self, camera: &str) -> Result<SegmentWriter> {
        let key = DataKey::generate()?;
        let now = self.clock.now_us();
        let id = self.register_segment(camera, &key, now)?;
        let dir = self.camera_dir(camera);
        let made = self.camera_dirs.lock().map(|d| d.contains(camera)).unwrap_or(false);
        if !made {
            // New camera directory: create it, then make its entry in segments/ durable.
            (|| {
                self.vfs.create_dir_all(&dir)?;
                self.vfs.sync_dir(&self.seg_root)
            })()
            .map_err(|e| Error::io("create camera directory", &dir, e))?;
            if let Ok(mut d) = self.camera_dirs.lock() {
                d.insert(camera.to_string());
            }
        }
        let writer = SegmentWriter::create(&self.vfs, &dir, &new_header(id, camera, now), &key);
        match writer {
            Ok(w) => {
                self.metrics.segments_created.fetch_add(1, Ordering::Relaxed);
                Ok(w)
            }
            Err(e) => {
                // The Open record is durable; mark it dropped so nothing waits on it.
                let files = [self.segment_path(camera, id), dir.join(crate::segment::writer::kfi_file_name(id))];
                if let Err(e2) = self.drop_segment(camera, id, &files) {
                    tracing::error!(error = %e2, segment = id.0, "could not drop a segment whose creation failed; recovery will");
                }
                Err(e)
            }
        }
    }

    /// Makes a new segment's data key and catalog Open record durable, group-committed with
    /// every other creation waiting at the same time: the first waiter leads, writing the whole
    /// batch's keys with one write and one key store fsync, then their Open records with one
    /// catalog fsync (DURABILITY.md "Lifecycle and fsync order"). Without this, streams that open together
    /// (a server restart, a site reconnecting) would queue behind two fsyncs each.
    fn register_segment(&self, camera: &str, key: &DataKey, now: i64) -> Result<SegmentId> {
        self.creations.submit(
            Creation { camera: camera.to_string(), key: key.clone(), created_us: now },
            |batch| self.commit_creations(batch),
            |no_space, msg| self.commit_failed("register new segment", &self.config.key_dir, no_space, msg),
        )
    }

    /// One batch of creations: keys (one fsync), then Open records (one fsync).
    fn commit_creations(&self, batch: &[Creation]) -> Result<Vec<SegmentId>> {
        let ids = {
            let mut keys = self.keys.lock().map_err(|_| Error::Poisoned("key store lock".into()))?;
            let keys = keys.as_mut().ok_or_else(|| Error::Decommissioned("the key store was destroyed".into()))?;
            let with_ids: Vec<(SegmentId, DataKey)> =
                batch.iter().map(|c| (SegmentId(self.next_segment.fetch_add(1, Ordering::SeqCst)), c.key.clone())).collect();
            keys.put_many(&with_ids)?;
            with_ids.into_iter().map(|(id, _)| id).collect::<Vec<_>>()
        };
        let opens: Vec<CatalogRecord> = batch
            .iter()
            .zip(&ids)
            .map(|(c, &segment)| CatalogRecord::Open { segment, created_us: c.created_us, camera: c.camera.clone() })
            .collect();
        self.catalog.lock().map_err(|_| Error::Poisoned("catalog lock".into()))?.append_many(&opens)?;
        Ok(ids)
    }

    /// Drop an empty segment: catalog Dropped (fsynced), then unlink its files.
    pub(crate) fn drop_segment(&self, camera: &str, id: SegmentId, files: &[PathBuf]) -> Result<()> {
        self.catalog_append(&CatalogRecord::Dropped { segment: id })?;
        for f in files {
            if self.vfs.exists(f) {
                self.vfs.remove_file(f).map_err(|e| Error::io("remove empty segment", f, e))?;
            }
        }
        let dir = self.camera_dir(camera);
        if self.vfs.exists(&dir) {
            self.vfs.sync_dir(&dir).map_err(|e| Error::io("fsync camera directory", &dir, e))?;
        }
        Ok(())
    }

    /// Records whether the disk is full (visible as `Store::is_out_of_space`, logged on change).
    pub(crate) fn set_no_space(&self, full: bool) {
        let was = self.no_space.swap(full, Ordering::Relaxed);
        if full {
            self.metrics.no_space_refusals.fetch_add(1, Ordering::Relaxed);
            if !was {
                tracing::error!("disk full: refusing new writes; nothing stored is deleted to make room");
            }
        } else if was {
            tracing::info!("space available again: accepting writes");
        }
    }

    pub(crate) fn unregister_stream(&self, id: u64) {
        if let Ok(mut s) = self.streams.lock() {
            s.remove(&id);
        }
    }

    fn footer_keyframes(&self, camera: &str, id: SegmentId, info: &SealedInfo) -> Result<Vec<crate::segment::format::KeyframeEntry>> {
        let path = self.segment_path(camera, id);
        let file = self.vfs.open(&path).map_err(|e| Error::io("open segment", &path, e))?;
        match read_footer(file.as_ref(), info.footer_offset, info.file_len).map_err(|e| Error::io("read footer", &path, e))? {
            Ok(f) => Ok(f.keyframes),
            Err(detail) => Err(self.report_corruption(path, Some(id), Some(info.footer_offset), detail)),
        }
    }

    pub(crate) fn report(&self, path: PathBuf, segment: Option<SegmentId>, offset: Option<u64>, detail: String) -> CorruptionReport {
        let r = CorruptionReport { path, segment, offset, detail, detected_us: self.clock.now_us() };
        tracing::error!(path = %r.path.display(), segment = ?r.segment.map(|s| s.0), offset = ?r.offset, detail = %r.detail, "corruption detected");
        if let Ok(mut c) = self.corruptions.lock() {
            if !c.iter().any(|x| x.path == r.path && x.offset == r.offset && x.detail == r.detail) {
                c.push(r.clone());
            }
        }
        r
    }

    pub(crate) fn report_corruption(&self, path: PathBuf, segment: Option<SegmentId>, offset: Option<u64>, detail: String) -> Error {
        let r = self.report(path, segment, offset, detail);
        Error::Corrupt { path: r.path, offset: r.offset, detail: r.detail }
    }

    pub(crate) fn seg_root(&self) -> &Path {
        &self.seg_root
    }
}

/// [`Store::read`], for the store's own parts (a resumed stream compares re-sent frames with
/// what is stored).
pub(crate) fn read_frames(inner: &Arc<Inner>, camera: &str, from_us: i64, to_us: i64) -> Result<FrameReader> {
    inner.check_live()?;
    if from_us >= to_us {
        return Err(Error::InvalidArgument(format!("empty time range [{from_us}, {to_us})")));
    }
    let idx = inner.existing_index(camera)?;
    let entries = idx.lock().map_err(|_| Error::Poisoned("index lock".into()))?.covering(from_us, to_us);
    let mut plans = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let (end, keyframes) = match &e.state {
            EntryState::Sealed(s) => {
                let kf = if i == 0 { inner.footer_keyframes(camera, e.id, s)? } else { Vec::new() };
                (s.footer_offset, kf)
            }
            EntryState::Open { view, .. } => {
                let v = view.lock().map_err(|_| Error::Poisoned("segment view lock".into()))?;
                (v.durable_len, if i == 0 { v.keyframes.clone() } else { Vec::new() })
            }
        };
        let start_key = keyframes.iter().rev().find(|k| k.ts_us <= from_us && k.offset < end);
        plans.push(SegmentPlan {
            id: e.id,
            camera: camera.to_string(),
            start: start_key.map_or(HEADER_LEN as u64, |k| k.offset),
            config_offset: start_key.map(|k| k.config_offset),
            end,
        });
    }
    Ok(FrameReader { inner: inner.clone(), plans: plans.into_iter(), to_us, current: None, done: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{CrashMode, MemVfs};
    use crate::{FrameIn, SimClock};

    /// A round waits the period less the longest of the last four rounds, never less than
    /// nothing, and forgets a round once four newer ones have run.
    #[test]
    fn pacer_starts_rounds_early_by_the_longest_of_the_last_four() {
        let ms = std::time::Duration::from_millis;
        let mut p = RoundPacer::new(ms(1000));
        assert_eq!(p.wait(), ms(1000), "no round run yet");
        p.finished(ms(300));
        p.finished(ms(100));
        assert_eq!(p.wait(), ms(700));
        p.finished(ms(1500));
        assert_eq!(p.wait(), ms(0), "a round longer than the period: back to back");
        for _ in 0..3 {
            p.finished(ms(200));
        }
        assert_eq!(p.wait(), ms(0), "the 1.5 s round is one of the last four");
        p.finished(ms(200));
        assert_eq!(p.wait(), ms(800), "the 1.5 s round is forgotten after four newer ones");
    }

    /// A store on an in-memory file system, flushed by the OS only, without a sweeper, with a
    /// clock at its capture time origin.
    fn mem_store() -> (MemVfs, Store, i64) {
        let vfs = MemVfs::new();
        let mut cfg = StoreConfig::new("/data");
        cfg.key_dir = PathBuf::from("/keys");
        cfg.kek_dir = PathBuf::from("/kek");
        cfg.flush = FlushPolicy::OsWriteBack;
        cfg.sweep_interval = None;
        let t0 = 1_767_225_600_000_000i64;
        let env = Env { vfs: Arc::new(vfs.clone()), clock: Arc::new(SimClock::new(t0)), kek: None };
        let store = Store::open_with(cfg, env).expect("open");
        (vfs, store, t0)
    }

    /// The frame reader leaves the CRC to AES-GCM, which authenticates every header field but
    /// the CRC: a header forged with a fixed-up CRC (a later capture time) is refused as not
    /// authentic instead of moving or ending the read, and rot in a body is still reported as a
    /// CRC mismatch (the CRC checked over the stored bytes once decryption fails).
    #[test]
    fn reads_refuse_forged_headers_and_report_rot_as_a_crc_mismatch() {
        use crate::segment::format::{finish_record, RecordHeader, HEADER_LEN, RECORD_HEADER_LEN};
        let (vfs, store, t0) = mem_store();
        let mut w = store.open_stream("cam-1", Codec::H264, b"cfg").expect("stream");
        for n in 0..10i64 {
            w.append(FrameIn { ts_us: t0 + n * 40_000, pts_90k: None, key: n == 0, payload: &[n as u8 + 1; 300] }).expect("append");
        }
        w.close().expect("close");
        let path = vfs.files().into_iter().find(|p| p.extension().is_some_and(|e| e == "seg")).expect("segment file");
        let image = vfs.contents(&path).expect("segment");
        // Record offsets: the codec configuration, then the frames, then the footer.
        let mut offsets = Vec::new();
        let mut pos = HEADER_LEN;
        while pos < image.len() {
            let h = RecordHeader::decode(&image[pos..]).expect("record header");
            offsets.push(pos);
            pos += h.record_len() as usize;
        }
        assert_eq!(offsets.len(), 12, "config, ten frames, footer");
        let read_all = || store.read("cam-1", t0, t0 + 1_000_000).expect("plan").collect::<Result<Vec<_>>>();
        assert_eq!(read_all().expect("intact").len(), 11, "config and ten frames");

        // Frame 3's capture time moved past the range, CRC fixed up: without authentication the
        // reader would end the read there, silently.
        let (at, len) = (offsets[4], offsets[5] - offsets[4]);
        let mut forged = image[at..at + len].to_vec();
        let mut h = RecordHeader::decode(&forged).expect("header");
        h.ts_us = t0 + 2_000_000;
        h.encode(&mut forged[..RECORD_HEADER_LEN]);
        finish_record(&mut forged);
        assert!(vfs.corrupt(&path, at as u64, &forged));
        let err = read_all().expect_err("a forged header is refused");
        let Error::Corrupt { detail, .. } = &err else { panic!("corruption expected, got {err}") };
        assert!(detail.contains("AES-GCM authentication"), "{detail}");

        // Rot in frame 5's body, CRC left as it was.
        assert!(vfs.corrupt(&path, at as u64, &image[at..at + len]));
        assert_eq!(read_all().expect("restored").len(), 11);
        let at = offsets[6] + RECORD_HEADER_LEN + 10;
        assert!(vfs.corrupt(&path, at as u64, &[image[at] ^ 0x40]));
        let err = read_all().expect_err("rot is reported");
        let Error::Corrupt { detail, .. } = &err else { panic!("corruption expected, got {err}") };
        assert!(detail.contains("CRC mismatch"), "{detail}");
    }

    /// Streams closing together share catalog commits, and each close returns only once its
    /// Sealed record is durable: after a crash that loses everything unsynced, the catalog
    /// still names every segment sealed (nothing is left for recovery to re-seal).
    #[test]
    fn streams_closing_together_each_return_with_their_sealed_record_durable() {
        const STREAMS: usize = 24;
        let (vfs, store, t0) = mem_store();
        let writers: Vec<StreamWriter> = (0..STREAMS)
            .map(|i| {
                let mut w = store.open_stream(&format!("cam-{i:02}"), Codec::H264, b"cfg").expect("stream");
                for n in 0..10i64 {
                    w.append(FrameIn { ts_us: t0 + n * 40_000, pts_90k: None, key: n == 0, payload: &[i as u8 + 1; 300] }).expect("append");
                }
                w
            })
            .collect();
        let start = Arc::new(std::sync::Barrier::new(STREAMS));
        std::thread::scope(|s| {
            for w in writers {
                let start = start.clone();
                s.spawn(move || {
                    start.wait();
                    w.close().expect("close");
                });
            }
        });
        drop(store);
        let image = vfs.crash(CrashMode::LoseUnsynced);
        let loaded =
            Catalog::open(&(Arc::new(image) as Arc<dyn Vfs>), Path::new("/data/catalog"), crate::log::Access::Read).expect("catalog");
        assert_eq!(loaded.entries.len(), STREAMS);
        for (id, e) in &loaded.entries {
            let sealed = e.sealed.as_ref().unwrap_or_else(|| panic!("segment {} of {} has no durable Sealed record", id.0, e.camera));
            assert_eq!(sealed.frame_count, 10, "{}", e.camera);
        }
    }
}
