//! The ramp: streams paced in real time (each frame appended at its capture time, as a camera
//! sends it), stepping the stream count up until durable acknowledgements fall behind or
//! frames would be dropped. The knee is the last step that keeps both.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storage_core::{Codec, FlushPolicy, FrameIn, Store, StoreConfig, WRITE_BATCH_BYTES};

use crate::{Profile, T0_US};

/// How long a camera can hold frames the recorder has not taken: a frame appended later than
/// this after its capture time counts as dropped.
pub const CAMERA_BUFFER: Duration = Duration::from_secs(1);

/// How often the driving threads look for newly durable frames: the latency figures are
/// accurate to this.
const POLL: Duration = Duration::from_millis(2);

/// One step of the ramp.
#[derive(Debug, Clone, Copy)]
pub struct RampStep {
    /// Concurrent streams.
    pub streams: usize,
    /// Offered load, MB/s.
    pub offered_mb_s: f64,
    /// Durable-ack latency (append to durable), milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Worst, milliseconds.
    pub max_ms: f64,
    /// Frames appended later than [`CAMERA_BUFFER`] after their capture time.
    pub late_frames: u64,
    /// Frames appended.
    pub frames: u64,
    /// The longest single append call, milliseconds (a stall shows here).
    pub max_append_ms: f64,
}

/// Where a paced stream's frames go: the engine's stream, or the raw baseline's file.
pub trait Sink: Send {
    /// Appends frame bytes; returns the frame's sequence number (1, 2, ...).
    fn append(&mut self, ts_us: i64, key: bool, payload: &[u8]) -> Result<u64, String>;
    /// Highest sequence number known durable.
    fn durable(&self) -> u64;
    /// Ends the stream; everything appended becomes durable.
    fn finish(self) -> Result<(), String>;
}

impl Sink for storage_core::StreamWriter {
    fn append(&mut self, ts_us: i64, key: bool, payload: &[u8]) -> Result<u64, String> {
        storage_core::StreamWriter::append(self, FrameIn { ts_us, pts_90k: None, key, payload }).map_err(|e| e.to_string())
    }
    fn durable(&self) -> u64 {
        self.durable_seq()
    }
    fn finish(self) -> Result<(), String> {
        self.close().map_err(|e| e.to_string())
    }
}

/// The raw baseline's stream: a plain file, the same 256 KiB writes, made durable by
/// [`RawFlusher`] on the same deadline cadence as the engine's group commit.
pub struct RawStream(Arc<RawShared>);

struct RawShared {
    file: File,
    /// Buffered bytes, file length, frames appended.
    state: Mutex<(Vec<u8>, u64, u64)>,
    durable: AtomicU64,
}

impl RawShared {
    fn sync(&self) -> std::io::Result<()> {
        let seq = {
            let mut g = self.state.lock().map_err(|_| std::io::Error::other("poisoned"))?;
            let (buf, off, seq) = &mut *g;
            if !buf.is_empty() {
                self.file.write_all_at(buf, *off)?;
                *off += buf.len() as u64;
                buf.clear();
            }
            *seq
        };
        if seq > self.durable.load(Ordering::Acquire) {
            self.file.sync_data()?;
            self.durable.store(seq, Ordering::Release);
        }
        Ok(())
    }
}

impl Sink for RawStream {
    fn append(&mut self, _ts_us: i64, _key: bool, payload: &[u8]) -> Result<u64, String> {
        let mut g = self.0.state.lock().map_err(|_| "poisoned")?;
        let (buf, off, seq) = &mut *g;
        buf.extend_from_slice(payload);
        if buf.len() >= WRITE_BATCH_BYTES {
            self.0.file.write_all_at(buf, *off).map_err(|e| e.to_string())?;
            *off += buf.len() as u64;
            buf.clear();
        }
        *seq += 1;
        Ok(*seq)
    }
    fn durable(&self) -> u64 {
        self.0.durable.load(Ordering::Acquire)
    }
    fn finish(self) -> Result<(), String> {
        self.0.sync().map_err(|e| e.to_string())
    }
}

/// Group commit for the raw baseline: `threads` threads fsync every file, rounds started
/// `period` less the longest recent round apart (the engine's cadence).
struct RawFlusher {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl RawFlusher {
    fn start(files: Vec<Arc<RawShared>>, period: Duration, threads: usize) -> RawFlusher {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut recent = [Duration::ZERO; 4];
            let mut round = 0;
            let mut next = Instant::now() + period;
            while !stop2.load(Ordering::Relaxed) {
                if Instant::now() < next {
                    std::thread::sleep(POLL);
                    continue;
                }
                let started = Instant::now();
                let chunk = files.len().div_ceil(threads).max(1);
                std::thread::scope(|s| {
                    for part in files.chunks(chunk) {
                        s.spawn(move || part.iter().for_each(|f| drop(f.sync())));
                    }
                });
                recent[round % recent.len()] = started.elapsed();
                round += 1;
                next = Instant::now() + period.saturating_sub(recent.iter().copied().max().unwrap_or_default());
            }
        });
        RawFlusher { stop, handle: Some(handle) }
    }
}

impl Drop for RawFlusher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Paced<S> {
    sink: S,
    /// Appended, not yet durable: (sequence number, when appended).
    pending: VecDeque<(u64, Instant)>,
}

fn collect_durable<S: Sink>(streams: &mut [Paced<S>], lat_ms: &mut Vec<f64>) {
    let now = Instant::now();
    for s in streams.iter_mut() {
        let durable = s.sink.durable();
        while s.pending.front().is_some_and(|&(seq, _)| seq <= durable) {
            if let Some((_, at)) = s.pending.pop_front() {
                lat_ms.push((now - at).as_secs_f64() * 1e3);
            }
        }
    }
}

/// Runs `streams` paced engine streams for `seconds` under group commit every `flush`.
pub fn run_step(dir: &Path, profile: Profile, streams: usize, seconds: u32, flush: Duration, payload: &[u8]) -> Result<RampStep, String> {
    let mut cfg = StoreConfig::new(dir);
    cfg.flush = FlushPolicy::Interval(flush);
    cfg.sweep_interval = None;
    let store = Store::open(cfg).map_err(|e| e.to_string())?;
    let sinks = (0..streams)
        .map(|i| store.open_stream_as(&format!("cam-{i:05}"), Codec::H264, b"sps-pps", storage_core::StreamKind::Backfill))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    paced(sinks, profile, seconds, flush, payload)
}

/// The raw baseline of [`run_step`]: one plain file per stream, same writes, same cadence.
pub fn run_step_raw(
    dir: &Path,
    profile: Profile,
    streams: usize,
    seconds: u32,
    flush: Duration,
    payload: &[u8],
) -> Result<RampStep, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let shared = (0..streams)
        .map(|i| {
            let file = OpenOptions::new().create(true).truncate(true).write(true).open(dir.join(format!("{i:05}.raw")))?;
            Ok(Arc::new(RawShared { file, state: Mutex::new((Vec::with_capacity(WRITE_BATCH_BYTES), 0, 0)), durable: AtomicU64::new(0) }))
        })
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    let flusher = RawFlusher::start(shared.clone(), flush, 4);
    let r = paced(shared.into_iter().map(RawStream).collect(), profile, seconds, flush, payload);
    drop(flusher);
    r
}

fn paced<S: Sink>(sinks: Vec<S>, profile: Profile, seconds: u32, flush: Duration, payload: &[u8]) -> Result<RampStep, String> {
    let streams = sinks.len();
    let threads = 2usize;
    let per = streams.div_ceil(threads).max(1);
    let mut parts: Vec<Vec<Paced<S>>> = Vec::new();
    let mut it = sinks.into_iter();
    loop {
        let part: Vec<Paced<S>> = it.by_ref().take(per).map(|sink| Paced { sink, pending: VecDeque::new() }).collect();
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    let frames = u64::from(seconds) * u64::from(profile.fps);
    let frame = Duration::from_micros(profile.frame_us() as u64);
    // Each stream's first frame is appended before the clock starts: it creates the stream's
    // segment (the engine: a key store and a catalog fsync shared by concurrent creators; raw:
    // the file already exists). The ramp measures recording, not a thousand cameras connecting
    // in the same instant.
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter_mut()
            .enumerate()
            .map(|(t, part)| {
                s.spawn(move || -> Result<(), String> {
                    for (i, p) in part.iter_mut().enumerate() {
                        let (size, key) = profile.frame_bytes(0, ((t * per + i) % 25) as u32);
                        p.sink.append(T0_US, key, &payload[..size])?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| Err("ramp thread panicked".into())))
    })?;
    let start = Instant::now() + Duration::from_millis(50);
    type ThreadResult<S> = Result<(Vec<f64>, u64, Vec<Paced<S>>, Duration), String>;
    let results: Vec<ThreadResult<S>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .enumerate()
            .map(|(t, mut part)| {
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(part.len() * frames as usize);
                    let mut late = 0u64;
                    let mut collected = Instant::now();
                    let mut worst_append = Duration::ZERO;
                    for n in 1..=frames {
                        // Streams are spread evenly over the frame interval, as unsynchronised
                        // cameras are; each frame is appended no earlier than its capture time.
                        let len = part.len().max(1) as u32;
                        for i in 0..part.len() {
                            if collected.elapsed() >= POLL {
                                collect_durable(&mut part, &mut lat);
                                collected = Instant::now();
                            }
                            let p = &mut part[i];
                            let stream = t * per + i;
                            let due = start + frame * (n - 1) as u32 + frame * i as u32 / len;
                            let now = Instant::now();
                            if now < due {
                                std::thread::sleep(due - now);
                            }
                            if Instant::now() - due > CAMERA_BUFFER {
                                late += 1;
                            }
                            let (size, key) = profile.frame_bytes(n, (stream % 25) as u32);
                            let before = Instant::now();
                            let seq = p.sink.append(T0_US + n as i64 * profile.frame_us(), key, &payload[..size])?;
                            let after = Instant::now();
                            worst_append = worst_append.max(after - before);
                            p.pending.push_back((seq, after));
                        }
                    }
                    // Wait for the last frames' group commit.
                    let deadline = Instant::now() + flush * 10;
                    while part.iter().any(|p| !p.pending.is_empty()) && Instant::now() < deadline {
                        std::thread::sleep(POLL);
                        collect_durable(&mut part, &mut lat);
                    }
                    Ok((lat, late, part, worst_append))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("ramp thread panicked".into()))).collect()
    });
    let mut lat = Vec::new();
    let mut late = 0;
    let mut worst_append = Duration::ZERO;
    for r in results {
        let (l, d, part, w) = r?;
        worst_append = worst_append.max(w);
        lat.extend(l);
        late += d;
        for p in part {
            if !p.pending.is_empty() {
                return Err(format!("{} frames never became durable", p.pending.len()));
            }
            p.sink.finish()?;
        }
    }
    lat.sort_by(f64::total_cmp);
    let q = |x: f64| lat.get(((lat.len() as f64 * x) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0.0);
    Ok(RampStep {
        streams,
        offered_mb_s: streams as f64 * profile.bitrate_bps as f64 / 8.0 / 1e6,
        p50_ms: q(0.50),
        p99_ms: q(0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
        late_frames: late,
        frames: frames * streams as u64,
        max_append_ms: worst_append.as_secs_f64() * 1e3,
    })
}
