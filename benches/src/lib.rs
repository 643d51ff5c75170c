//! Load generation and baselines for camvault's benchmarks.
//!
//! Every engine figure is measured beside a baseline run in the same process on the same disk:
//! the same frame bytes written as plain appends into one file per stream, batched into the
//! same write size and fsynced on the same cadence by the same number of threads, with no
//! encryption, no CRC and no index.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storage_core::{Codec, FlushPolicy, FrameIn, Store, StoreConfig, WRITE_BATCH_BYTES};

pub mod grpc;
pub mod peer;
pub mod ramp;

/// A camera stream's shape.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// Bits per second.
    pub bitrate_bps: u64,
    /// Frames per second.
    pub fps: u32,
    /// Frames per GOP (key frame interval).
    pub gop_frames: u32,
    /// Key frame size as a multiple of a predicted frame's.
    pub key_ratio: u32,
}

impl Profile {
    /// 1080p-like: 4 Mbit/s, 25 fps, a key frame each second (I-frames ~8x P-frames).
    pub const HD_4MBIT: Profile = Profile { bitrate_bps: 4_000_000, fps: 25, gop_frames: 25, key_ratio: 8 };
    /// 4K-like: 16 Mbit/s, 25 fps, 2 s GOP (I-frames above 1 MiB).
    pub const UHD_16MBIT: Profile = Profile { bitrate_bps: 16_000_000, fps: 25, gop_frames: 50, key_ratio: 20 };

    /// Seconds of video each of `streams` streams needs for a run to move at least `min_bytes`
    /// (whole GOPs), or `seconds` if that is more: a run of one stream for 20 s moves 10 MB in
    /// a few tens of milliseconds, which measures the fixed costs of a call and not its rate.
    pub fn seconds_for(&self, streams: usize, seconds: u32, min_bytes: u64) -> u32 {
        let per_second = (self.bitrate_bps / 8).max(1) * streams.max(1) as u64;
        let gop_s = (self.gop_frames / self.fps.max(1)).max(1);
        let needed = min_bytes.div_ceil(per_second).div_ceil(u64::from(gop_s)) * u64::from(gop_s);
        seconds.max(u32::try_from(needed).unwrap_or(u32::MAX))
    }

    /// Size of frame `n` of a stream whose GOP starts at `phase`: large key frames, small
    /// predicted frames, jittered ±12% deterministically.
    pub fn frame_bytes(&self, n: u64, phase: u32) -> (usize, bool) {
        let gop_bytes = self.bitrate_bps / 8 * u64::from(self.gop_frames) / u64::from(self.fps);
        let units = u64::from(self.key_ratio) + u64::from(self.gop_frames) - 1;
        let p = gop_bytes / units;
        let key = (n + u64::from(phase)).is_multiple_of(u64::from(self.gop_frames));
        let base = if key { p * u64::from(self.key_ratio) } else { p };
        let jitter = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as i64 - 32; // -32..31
        let size = (base as i64 + base as i64 * jitter / 256).max(64) as usize;
        (size, key)
    }

    /// Frame interval in microseconds.
    pub fn frame_us(&self) -> i64 {
        1_000_000 / i64::from(self.fps)
    }
}

/// Pseudo-random bytes standing in for encoded video (incompressible, like real video).
pub fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A frame's bytes as a camera sends them: an Annex B slice NAL unit (start code, a non-IDR
/// slice header byte) followed by incompressible bytes. The server checks at its door that a
/// payload is an access unit of the stream's codec, so pure noise would be refused.
pub fn video_like(len: usize) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 1, 0x41];
    v.extend_from_slice(&noise(len.saturating_sub(v.len())));
    v.truncate(len);
    v
}

/// What one run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunResult {
    /// Payload bytes written.
    pub payload_bytes: u64,
    /// Bytes written to storage during the run (`/proc/self/io`), or the bytes left on disk
    /// where the kernel does not account writes, whichever is larger.
    pub disk_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Frames written.
    pub frames: u64,
    /// Resident memory growth during the run divided by streams, bytes.
    pub rss_per_stream: u64,
    /// Frames found when reading back (engine only).
    pub verified_frames: u64,
    /// CPU seconds used by the run.
    pub cpu_s: f64,
    /// Engine runs: time to append every stream's first frame (creating its segment) from
    /// many threads at once, before the clock starts.
    pub connect: Duration,
    /// Engine and raw runs: the final close (seal) or flush of every stream, from
    /// [`CLOSE_THREADS`] threads at once; inside the clock.
    pub close: Duration,
}

impl RunResult {
    /// Payload throughput, MB/s.
    pub fn mb_s(&self) -> f64 {
        self.payload_bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    /// Bytes written to storage per payload byte.
    pub fn write_amp(&self) -> f64 {
        self.disk_bytes as f64 / self.payload_bytes as f64
    }

    /// CPU seconds per GB of payload.
    pub fn cpu_s_per_gb(&self) -> f64 {
        self.cpu_s / (self.payload_bytes as f64 / 1e9)
    }
}

/// Resident set size of this process, bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// Bytes this process has caused to be written to storage (`write_bytes` less
/// `cancelled_write_bytes` of `/proc/self/io`), background threads included; file system
/// journal writes by the kernel are not counted. 0 where the kernel does not account it.
pub fn disk_write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .map(|s| {
            let field = |name: &str| s.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<u64>().ok())).unwrap_or(0);
            // Pages dirtied and then truncated away before write-back never reached the disk.
            field("write_bytes: ").saturating_sub(field("cancelled_write_bytes: "))
        })
        .unwrap_or(0)
}

/// Bytes under `dir`, recursively.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

/// Capture time of every stream's first frame (2026-01-01T00:00:00Z), microseconds: the
/// benchmarks write synthetic footage of the past, as backfills.
pub const T0_US: i64 = 1_767_225_600_000_000;

/// A scenario: `streams` streams of `profile` for `seconds` of video each, written as fast as
/// the writer can, with `threads` appending threads.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Concurrent streams.
    pub streams: usize,
    /// Stream shape.
    pub profile: Profile,
    /// Seconds of video per stream.
    pub seconds: u32,
    /// Appending threads.
    pub threads: usize,
    /// Group-commit period.
    pub flush: Duration,
    /// When data is made durable (applied to the engine and the raw baseline alike).
    pub policy: Policy,
}

impl Scenario {
    /// Payload bytes the scenario writes, from its bitrate.
    pub fn nominal_bytes(&self) -> u64 {
        self.streams as u64 * u64::from(self.seconds) * self.profile.bitrate_bps / 8
    }
}

/// Most memory [`warm_guest_memory`] touches.
const WARM_BYTES_MAX: u64 = 8 << 30;

/// Touches and frees `bytes` of memory just before a timed run, so that every side starts
/// from the same memory state.
///
/// On this VM the host takes back guest memory the guest has freed (virtio-balloon free page
/// reporting), and the first write to such a page costs a host fault. Writing the same 4.2 GB
/// into the page cache with `dd` took 1.9, 0.8 and 1.1 s of system time back to back, and
/// 2.9 s after 30 s idle. Without this step, a run that started right after the previous
/// run's files were deleted got warm pages and a run that started after a pause (the server's
/// start and setup) paid the faults: in one profile the engine's own page-cache copies took
/// 1% of its samples, the raw baseline's 14% and the server's 37%, for the same bytes.
/// The freed pages stay in the guest's free lists for a few seconds, where the page cache (of
/// this process or the server's) takes them first.
pub fn warm_guest_memory(bytes: u64) {
    let bytes = bytes.min(WARM_BYTES_MAX) as usize;
    // Non-zero, so the allocation is written page by page rather than mapped as zero pages.
    let touched = vec![1u8; bytes];
    std::hint::black_box(&touched);
}

/// Longest [`settle_disk`] waits for the disk to finish discarding freed blocks.
const SETTLE_WAIT_MAX: Duration = Duration::from_secs(30);

/// How long the discard count must stay still for [`settle_disk`] to call the disk settled.
const SETTLE_QUIET: Duration = Duration::from_millis(300);

/// Discard requests completed by every block device (`/proc/diskstats`, column 15), and the
/// requests in flight (column 12). `None` where the kernel does not report discards.
fn discards_and_in_flight() -> Option<(u64, u64)> {
    diskstats_discards_and_in_flight(&std::fs::read_to_string("/proc/diskstats").ok()?)
}

/// [`discards_and_in_flight`] of a `/proc/diskstats` text: `None` if any line lacks the
/// discard fields (kernels before 4.18) or holds a non-number there.
fn diskstats_discards_and_in_flight(stats: &str) -> Option<(u64, u64)> {
    let mut sums = (0u64, 0u64);
    for line in stats.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(in_flight), Some(discards)) = (f.get(11), f.get(14)) else { return None };
        sums.0 += discards.parse::<u64>().ok()?;
        sums.1 += in_flight.parse::<u64>().ok()?;
    }
    Some(sums)
}

/// Makes the file system under `dir` commit its journal (`sync -f`) and waits, at most
/// [`SETTLE_WAIT_MAX`], until the disk has stopped discarding, so that a timed run does not
/// pay for blocks an earlier run freed.
///
/// On a file system mounted with `discard` (as this machine's is), deleting a run's files
/// discards their blocks only once the journal commits, in the background: a 10 GB run's
/// deletion came out as some 500 discard requests in the middle of the next run's timed
/// phase, where the disk's write rate fell from about 1.5 GB to 0.15 GB per half second
/// (BENCHMARKS.md, History). Each side deletes its files after its run, so which side paid
/// depended on the order.
pub fn settle_disk(dir: &Path) {
    let _ = std::process::Command::new("sync").arg("-f").arg(dir).status();
    let deadline = Instant::now() + SETTLE_WAIT_MAX;
    let Some(mut last) = discards_and_in_flight() else { return };
    let mut still_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let Some(now) = discards_and_in_flight() else { return };
        if now.0 != last.0 || now.1 > 0 {
            still_since = Instant::now();
        } else if still_since.elapsed() >= SETTLE_QUIET {
            return;
        }
        last = now;
    }
}

/// What every side does just before its clock starts: [`settle_disk`], then
/// [`warm_guest_memory`] for `bytes`.
pub fn start_line(dir: &Path, bytes: u64) {
    settle_disk(dir);
    warm_guest_memory(bytes);
}

/// The guest's free page reporting (virtio-balloon), where the kernel exposes it: how soon
/// freed memory goes back to the host, whose next touch of it then costs a host fault.
#[derive(Debug, Clone, Copy)]
pub struct HostReporting {
    /// Milliseconds a freed page waits before it is reported.
    pub min_free_ms: u64,
    /// Free memory that may wait; beyond it pages are reported at once.
    pub max_waiting_mib: u64,
    /// Memory reported to the host since boot.
    pub reported_kib: u64,
    /// Order of the free blocks reported (2^order pages); `None` where the kernel does not
    /// expose it.
    pub order: Option<u64>,
}

/// Largest order of a free block in Linux's buddy allocator on x86-64 (4 MiB). A reporting
/// order above it reports nothing: no free block is that large.
pub const BUDDY_ORDER_MAX: u64 = 10;

impl HostReporting {
    /// Whether freed memory can no longer be reported (and so costs no host fault later).
    pub fn is_off(&self) -> bool {
        self.order.is_some_and(|o| o > BUDDY_ORDER_MAX)
    }
}

/// Reads [`HostReporting`]; `None` on machines without it (bare metal, most VMs).
pub fn host_reporting() -> Option<HostReporting> {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/module/page_reporting/parameters/{name}")).ok()?.trim().parse().ok()
    };
    Some(HostReporting {
        min_free_ms: read("min_free_ms")?,
        max_waiting_mib: read("max_waiting_mib")?,
        reported_kib: read("reported_kib")?,
        order: read("page_reporting_order"),
    })
}

/// Durability policy of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// fsync every dirty file each flush period (group commit).
    Interval,
    /// fsync a stream's file at each key frame (per GOP), on the appending thread.
    PerGop,
    /// No fsync until the end (OS write-back only).
    OsWriteBack,
}

/// CPU seconds (user + system) this process has used.
pub fn cpu_seconds() -> f64 {
    cpu_seconds_of("/proc/self/stat")
}

/// CPU seconds (user + system) of the process whose `/proc/<pid>/stat` is `stat`.
pub fn cpu_seconds_of(stat: &str) -> f64 {
    std::fs::read_to_string(stat)
        .ok()
        .and_then(|s| {
            let rest = s.rsplit(')').next()?.split_whitespace().collect::<Vec<_>>();
            let ticks: u64 = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

/// Runs `f(stream, frame_index, phase)` for every frame in time order, spread over threads
/// that each own a slice of the streams.
fn drive<S: Send>(sc: &Scenario, states: Vec<S>, f: impl Fn(&mut S, usize, u64, u32) + Sync) -> Vec<S> {
    drive_range(states, 0..u64::from(sc.seconds) * u64::from(sc.profile.fps), sc.threads, &f)
}

/// Threads that append every stream's first frame before an engine run's clock starts, as
/// cameras connecting at once do (their segment creations share group commits).
const CONNECT_THREADS: usize = 32;

/// Threads that close every stream at the end of an engine run, or make the last bytes of
/// every file durable at the end of a raw run: streams end together as a server's do at
/// shutdown, each call on its own task (their seals share catalog group commits).
pub const CLOSE_THREADS: usize = 32;

/// `items` in at most `threads` consecutive parts of equal length (the last may be shorter).
fn split<S>(items: Vec<S>, threads: usize) -> Vec<Vec<S>> {
    let per = items.len().div_ceil(threads.max(1)).max(1);
    let mut parts: Vec<Vec<S>> = Vec::new();
    let mut it = items.into_iter();
    loop {
        let part: Vec<S> = it.by_ref().take(per).collect();
        if part.is_empty() {
            return parts;
        }
        parts.push(part);
    }
}

/// Runs `f` on every item from `threads` threads at once; the first error, if any.
fn each_parallel<S: Send, E: Send>(items: Vec<S>, threads: usize, f: impl Fn(S) -> Result<(), E> + Sync) -> Result<(), E> {
    let parts = split(items, threads);
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = parts.into_iter().map(|part| s.spawn(move || part.into_iter().try_for_each(f))).collect();
        // A panicking thread's panic goes on: a close that panicked did not succeed.
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect::<Result<Vec<()>, E>>().map(|_| ())
    })
}

/// [`drive`] over frames `frames` with `threads` threads.
fn drive_range<S: Send>(
    states: Vec<S>,
    frames: std::ops::Range<u64>,
    threads: usize,
    f: &(impl Fn(&mut S, usize, u64, u32) + Sync),
) -> Vec<S> {
    let per = states.len().div_ceil(threads.max(1)).max(1);
    let parts = split(states, threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .enumerate()
            .map(|(t, mut part)| {
                let f = &f;
                let frames = frames.clone();
                s.spawn(move || {
                    for n in frames {
                        for (i, st) in part.iter_mut().enumerate() {
                            let stream = t * per + i;
                            f(st, stream, n, (stream % 25) as u32);
                        }
                    }
                    part
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

struct RawFile {
    file: File,
    inner: Mutex<(Vec<u8>, u64)>,
}

/// The raw baseline: one plain file per stream, 256 KiB writes, fdatasync of every dirty file
/// each flush period by 4 threads, no encryption, no CRC, no index.
pub fn run_raw(dir: &Path, sc: &Scenario, payload: &[u8]) -> std::io::Result<RunResult> {
    std::fs::create_dir_all(dir)?;
    let files: Vec<Arc<RawFile>> = (0..sc.streams)
        .map(|i| {
            let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(dir.join(format!("{i:05}.raw")))?;
            Ok(Arc::new(RawFile { file, inner: Mutex::new((Vec::with_capacity(WRITE_BATCH_BYTES), 0)) }))
        })
        .collect::<std::io::Result<_>>()?;
    start_line(dir, sc.nominal_bytes());
    let rss0 = rss_bytes();
    let cpu0 = cpu_seconds();
    let io0 = disk_write_bytes();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let flush_one = |f: &RawFile| {
        let len = {
            let Ok(mut g) = f.inner.lock() else { return };
            let (buf, off) = &mut *g;
            if !buf.is_empty() {
                let _ = f.file.write_all_at(buf, *off);
                *off += buf.len() as u64;
                buf.clear();
            }
            *off
        };
        if len > 0 {
            let _ = f.file.sync_data();
        }
    };
    let mut peak = 0;
    let mut close = Duration::ZERO;
    let result = std::thread::scope(|s| {
        let flusher = s.spawn(|| {
            let mut pacer = storage_core::RoundPacer::new(sc.flush);
            let mut next = Instant::now() + pacer.wait();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
                if sc.policy != Policy::Interval || Instant::now() < next {
                    continue;
                }
                let round = Instant::now();
                let chunk = files.len().div_ceil(4);
                std::thread::scope(|s2| {
                    for part in files.chunks(chunk) {
                        s2.spawn(|| part.iter().for_each(|f| flush_one(f)));
                    }
                });
                pacer.finished(round.elapsed());
                next = Instant::now() + pacer.wait();
            }
        });
        let states: Vec<(Arc<RawFile>, u64)> = files.iter().map(|f| (f.clone(), 0u64)).collect();
        let states = drive(sc, states, |(f, bytes), _stream, n, phase| {
            let (size, key) = sc.profile.frame_bytes(n, phase);
            if key && n > 0 && sc.policy == Policy::PerGop {
                flush_one(f);
            }
            let Ok(mut g) = f.inner.lock() else { return };
            let (buf, off) = &mut *g;
            buf.extend_from_slice(&payload[..size]);
            *bytes += size as u64;
            if buf.len() >= WRITE_BATCH_BYTES {
                let _ = f.file.write_all_at(buf, *off);
                *off += buf.len() as u64;
                buf.clear();
            }
        });
        peak = rss_bytes();
        let closing = Instant::now();
        let _ = each_parallel(files.iter().collect(), CLOSE_THREADS, |f| {
            flush_one(f);
            Ok::<(), ()>(())
        });
        close = closing.elapsed();
        let elapsed = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        let _ = flusher.join();
        (states.iter().map(|s| s.1).sum::<u64>(), elapsed)
    });
    let (result, elapsed) = result;
    let frames = u64::from(sc.seconds) * u64::from(sc.profile.fps) * sc.streams as u64;
    Ok(RunResult {
        payload_bytes: result,
        disk_bytes: dir_bytes(dir).max(disk_write_bytes().saturating_sub(io0)),
        elapsed,
        frames,
        rss_per_stream: peak.saturating_sub(rss0) / sc.streams as u64,
        verified_frames: frames,
        cpu_s: cpu_seconds() - cpu0,
        connect: Duration::ZERO,
        close,
    })
}

/// The device's ceiling: the same bytes through one sequential file, same write size, fsync
/// each flush period.
pub fn run_sequential(dir: &Path, total_bytes: u64, flush: Duration) -> std::io::Result<RunResult> {
    std::fs::create_dir_all(dir)?;
    let file = OpenOptions::new().create(true).truncate(true).write(true).open(dir.join("sequential.raw"))?;
    let buf = noise(WRITE_BATCH_BYTES);
    start_line(dir, total_bytes);
    let start = Instant::now();
    let mut last_sync = Instant::now();
    let mut off = 0u64;
    while off < total_bytes {
        file.write_all_at(&buf, off)?;
        off += buf.len() as u64;
        if last_sync.elapsed() >= flush {
            file.sync_data()?;
            last_sync = Instant::now();
        }
    }
    file.sync_data()?;
    Ok(RunResult {
        payload_bytes: off,
        disk_bytes: off,
        elapsed: start.elapsed(),
        frames: 0,
        rss_per_stream: 0,
        verified_frames: 0,
        cpu_s: 0.0,
        connect: Duration::ZERO,
        close: Duration::ZERO,
    })
}

/// The engine: one camvault stream per camera, encryption on, group commit every `sc.flush`.
/// Reads back the frame counts afterwards (zero frames may be lost).
pub fn run_engine(dir: &Path, sc: &Scenario, payload: &[u8]) -> storage_core::Result<RunResult> {
    let mut cfg = StoreConfig::new(dir);
    cfg.flush = match sc.policy {
        Policy::Interval => FlushPolicy::Interval(sc.flush),
        Policy::PerGop => FlushPolicy::EveryKeyFrame,
        Policy::OsWriteBack => FlushPolicy::OsWriteBack,
    };
    cfg.sweep_interval = None;
    let store = Store::open(cfg)?;
    let t0 = T0_US;
    let streams: Vec<_> = (0..sc.streams)
        .map(|i| {
            store.open_stream_as(&format!("cam-{i:05}"), Codec::H264, b"sps-pps", storage_core::StreamKind::Backfill).map(|s| (s, 0u64))
        })
        .collect::<Result<_, _>>()?;
    let errors = AtomicBool::new(false);
    let frame_us = sc.profile.frame_us();
    let append = |(s, bytes): &mut (storage_core::StreamWriter, u64), _stream: usize, n: u64, phase: u32| {
        let (size, key) = sc.profile.frame_bytes(n, phase);
        let r = s.append(FrameIn { ts_us: t0 + n as i64 * frame_us, pts_90k: Some(n as i64 * 3600), key, payload: &payload[..size] });
        match r {
            Ok(_) => *bytes += size as u64,
            Err(_) => errors.store(true, Ordering::Relaxed),
        }
    };
    // The first frame of each stream creates its segment: appended from many threads before
    // the clock starts, as cameras connecting to a server would (the creations share group
    // commits); timed on its own. The raw baseline creates its files untimed too.
    let connect = Instant::now();
    let streams = drive_range(streams, 0..1, CONNECT_THREADS, &append);
    let connect = connect.elapsed();
    let primed: u64 = streams.iter().map(|s| s.1).sum();
    start_line(dir, sc.nominal_bytes());
    let rss0 = rss_bytes();
    let cpu0 = cpu_seconds();
    let io0 = disk_write_bytes();
    let start = Instant::now();
    let streams = drive_range(streams, 1..u64::from(sc.seconds) * u64::from(sc.profile.fps), sc.threads, &append);
    let peak = rss_bytes();
    let payload_bytes: u64 = streams.iter().map(|s| s.1).sum::<u64>() - primed;
    let closing = Instant::now();
    each_parallel(streams, CLOSE_THREADS, |(s, _)| s.close())?;
    let close = closing.elapsed();
    let elapsed = start.elapsed();
    let cpu = cpu_seconds();
    let written = disk_write_bytes().saturating_sub(io0);
    if errors.load(Ordering::Relaxed) {
        return Err(storage_core::Error::InvalidArgument("appends failed during the run".into()));
    }
    let verified = verify_engine(&store, sc, payload, T0_US)?;
    let frames = u64::from(sc.seconds) * u64::from(sc.profile.fps) * sc.streams as u64;
    drop(store);
    Ok(RunResult {
        payload_bytes,
        disk_bytes: dir_bytes(dir).max(written),
        elapsed,
        frames,
        rss_per_stream: peak.saturating_sub(rss0) / sc.streams as u64,
        verified_frames: verified,
        cpu_s: cpu - cpu0,
        connect,
        close,
    })
}

/// Reads every stream back through the engine (decrypting) and counts the frames that arrived
/// whole and in order: frame `n` of stream `i` must carry capture time `t0 + n` frame intervals,
/// the generator's size and key flag for it, and the generator's bytes. A stream stops counting
/// at its first missing, reordered or altered frame, so any loss shows as a shortfall.
pub fn verify_engine(store: &Store, sc: &Scenario, payload: &[u8], t0: i64) -> storage_core::Result<u64> {
    let mut verified = 0u64;
    for i in 0..sc.streams {
        let phase = (i % 25) as u32;
        let mut n = 0u64;
        for item in store.read(&format!("cam-{i:05}"), i64::MIN + 1, i64::MAX)? {
            let storage_core::ReadItem::Frame(f) = item? else { continue };
            let (size, key) = sc.profile.frame_bytes(n, phase);
            if f.ts_us != t0 + n as i64 * sc.profile.frame_us() || f.key != key || f.payload[..] != payload[..size] {
                break;
            }
            n += 1;
        }
        verified += n;
    }
    Ok(verified)
}

/// Rotation of `keys` live data keys (1% of them erased) against the raw cost of the same I/O:
/// reading the key store and writing and fsyncing a file of the same size.
pub fn run_rotation(dir: &Path, keys: u64) -> storage_core::Result<(Duration, Duration)> {
    use storage_core::io::{StdVfs, Vfs};
    use storage_core::keys::{DataKey, FileKekProvider, KekProvider, KeyStore};
    use storage_core::SegmentId;
    let vfs: Arc<dyn Vfs> = Arc::new(StdVfs);
    let kek: Arc<dyn KekProvider> = Arc::new(FileKekProvider::open(vfs.clone(), dir.join("kek"))?);
    let mut ks = KeyStore::open(vfs, &dir.join("keys"), kek, 0, true)?;
    let mut batch = Vec::with_capacity(65_536);
    for i in 1..=keys {
        batch.push((SegmentId(i), DataKey::generate()?));
        if batch.len() == 65_536 {
            ks.put_many(&batch)?;
            batch.clear();
        }
    }
    ks.put_many(&batch)?;
    // Raw: the same bytes read and written sequentially, one fsync.
    let src = std::fs::read_dir(dir.join("keys")).map_err(|e| storage_core::Error::InvalidArgument(e.to_string()))?;
    let file = src.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "cvk"));
    let raw = {
        let start = Instant::now();
        if let Some(f) = &file {
            let bytes = std::fs::read(f).map_err(|e| storage_core::Error::InvalidArgument(e.to_string()))?;
            let out = File::create(dir.join("raw-copy")).map_err(|e| storage_core::Error::InvalidArgument(e.to_string()))?;
            out.write_all_at(&bytes, 0).and_then(|_| out.sync_data()).map_err(|e| storage_core::Error::InvalidArgument(e.to_string()))?;
        }
        start.elapsed()
    };
    let remove: std::collections::BTreeSet<SegmentId> = (1..=keys).step_by(100).map(SegmentId).collect();
    let start = Instant::now();
    let r = ks.rotate(&remove, 0)?;
    let engine = start.elapsed();
    assert_eq!(r.kept + r.removed.len() as u64, keys);
    Ok((engine, raw))
}

/// A retention sweep erasing `segments` expired segments (100 cameras) against the raw cost of
/// unlinking the same number of files and fsyncing their directories.
pub fn run_sweep(dir: &Path, segments: u64) -> storage_core::Result<(Duration, Duration, usize)> {
    use storage_core::io::{StdVfs, Vfs};
    use storage_core::keys::{FileKekProvider, KekProvider};
    let vfs: Arc<dyn Vfs> = Arc::new(StdVfs);
    let mut cfg = StoreConfig::new(dir.join("store"));
    cfg.sweep_interval = None;
    let kek: Arc<dyn KekProvider> = Arc::new(FileKekProvider::open(vfs.clone(), cfg.kek_dir.clone())?);
    let cameras = 100usize;
    let per = segments.div_ceil(cameras as u64);
    let day = 86_400_000_000i64;
    let now = {
        use storage_core::Clock;
        storage_core::SystemClock.now_us()
    };
    storage_core::testing::synthetic_store(&vfs, &cfg, kek.clone(), cameras, per, now - 60 * day, 900_000_000)?;
    let store = Store::open_with(cfg, storage_core::Env { vfs, clock: Arc::new(storage_core::SystemClock), kek: Some(kek) })?;
    let start = Instant::now();
    let report = store.sweep()?;
    let engine = start.elapsed();
    // Raw: the same number of files, unlinked, directories fsynced.
    let raw_dir = dir.join("raw");
    let mut paths = Vec::new();
    for c in 0..cameras {
        let d = raw_dir.join(format!("{c}"));
        std::fs::create_dir_all(&d).map_err(|e| storage_core::Error::InvalidArgument(e.to_string()))?;
        for s in 0..per {
            let p = d.join(format!("{s}.seg"));
            std::fs::write(&p, [0u8; 128]).map_err(|e| storage_core::Error::InvalidArgument(e.to_string()))?;
            paths.push(p);
        }
    }
    let start = Instant::now();
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    for c in 0..cameras {
        let _ = File::open(raw_dir.join(format!("{c}"))).and_then(|d| d.sync_all());
    }
    let raw = start.elapsed();
    Ok((engine, raw, report.erased()))
}

/// Time-range lookups on a catalog of `cameras` x `days` of 15-minute segments (real file
/// system): open time, then p50/p99 of `segments(camera, t, t + 1 s)` over `lookups` random
/// queries, in microseconds.
pub fn run_lookup(dir: &Path, cameras: usize, days: u64, lookups: usize) -> storage_core::Result<(Duration, f64, f64)> {
    use storage_core::io::{StdVfs, Vfs};
    let vfs: Arc<dyn Vfs> = Arc::new(StdVfs);
    let t0: i64 = 1_767_225_600_000_000;
    storage_core::testing::synthetic_catalog(&vfs, dir, cameras, days * 96, t0, 900_000_000)?;
    let mut cfg = StoreConfig::new(dir);
    cfg.sweep_interval = None;
    let start = Instant::now();
    let store = Store::open(cfg)?;
    let open = start.elapsed();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut lat = Vec::with_capacity(lookups);
    for _ in 0..lookups {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let cam = format!("cam-{:05}", x % cameras as u64);
        let t = t0 + ((x >> 20) % (days * 86_400)) as i64 * 1_000_000;
        let q = Instant::now();
        let segs = store.segments(&cam, t, t + 1_000_000)?;
        lat.push(q.elapsed().as_secs_f64() * 1e6);
        if segs.is_empty() {
            return Err(storage_core::Error::NotFound(format!("no segment of {cam} at {t}")));
        }
    }
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Ok((open, p(0.50), p(0.99)))
}

/// Open time of a store left by a crash with `streams` open streams (cameras `live-*`) of
/// `seconds` of video each (flushed, then abandoned without closing), and of a clean reopen of
/// the same store. `dir` may already hold a store (the lookup figure's catalog).
pub fn run_recovery(dir: &Path, streams: usize, seconds: u32, payload: &[u8]) -> storage_core::Result<(Duration, Duration)> {
    let profile = Profile::HD_4MBIT;
    let mut cfg = StoreConfig::new(dir);
    cfg.flush = FlushPolicy::OsWriteBack;
    cfg.sweep_interval = None;
    {
        let store = Store::open(cfg.clone())?;
        let mut ws = Vec::with_capacity(streams);
        for i in 0..streams {
            ws.push(store.open_stream_as(&format!("live-{i:05}"), Codec::H264, b"sps-pps", storage_core::StreamKind::Backfill)?);
        }
        let t0: i64 = 1_767_225_600_000_000;
        for n in 0..u64::from(seconds) * u64::from(profile.fps) {
            for (i, w) in ws.iter_mut().enumerate() {
                let (size, key) = profile.frame_bytes(n, (i % 25) as u32);
                w.append(FrameIn { ts_us: t0 + n as i64 * profile.frame_us(), pts_90k: None, key, payload: &payload[..size] })?;
            }
        }
        store.flush()?;
        // The process "dies": nothing is sealed or closed, and its locks go with it.
        std::mem::forget(ws);
        store.abandon();
    }
    let start = Instant::now();
    let store = Store::open(cfg.clone())?;
    let crashed = start.elapsed();
    drop(store);
    let start = Instant::now();
    let store = Store::open(cfg)?;
    let clean = start.elapsed();
    drop(store);
    Ok((crashed, clean))
}

#[cfg(test)]
mod tests {
    #[test]
    fn publish_calls_spread_over_a_few_connections_within_the_servers_limit() {
        use crate::grpc::connections_for;
        let limit = camvault_server::server::CALLS_PER_CONNECTION_MAX;
        assert_eq!(connections_for(1), 1);
        assert_eq!(connections_for(64), 8);
        assert_eq!(connections_for(1000), 8);
        for streams in [1, 7, 64, 1000, 2000, 2049, 4000] {
            let c = connections_for(streams);
            assert!(streams.div_ceil(c) <= limit, "{streams} streams over {c} connections");
        }
        assert_eq!(connections_for(4000), 4000usize.div_ceil(limit));
    }

    #[test]
    fn runs_are_lengthened_to_move_the_minimum_bytes_in_whole_gops() {
        let hd = super::Profile::HD_4MBIT; // 500 kB/s, 1 s GOP
        assert_eq!(hd.seconds_for(1, 20, 1_000_000_000), 2000);
        assert_eq!(hd.seconds_for(64, 20, 1_000_000_000), 32); // 31.25 s, rounded up
        assert_eq!(hd.seconds_for(1000, 20, 1_000_000_000), 20); // 20 s already move 10 GB
        assert_eq!(hd.seconds_for(1, 20, 0), 20);
        let uhd = super::Profile::UHD_16MBIT; // 2 MB/s, 2 s GOP
        assert_eq!(uhd.seconds_for(1, 3, 9_000_000), 6); // 4.5 s, rounded up to whole GOPs
    }

    use super::{each_parallel, split, HostReporting, BUDDY_ORDER_MAX};

    #[test]
    fn host_reporting_is_off_only_above_the_largest_free_block() {
        let r = |order| HostReporting { min_free_ms: 60_000, max_waiting_mib: 16_384, reported_kib: 0, order };
        assert!(r(Some(BUDDY_ORDER_MAX + 1)).is_off());
        assert!(!r(Some(9)).is_off(), "2 MiB blocks are reported");
        assert!(!r(Some(BUDDY_ORDER_MAX)).is_off(), "4 MiB blocks exist");
        assert!(!r(None).is_off(), "unknown order: assume reporting");
    }

    /// Column 12 (in flight) and column 15 (discards completed) of every device are summed; a
    /// kernel without the discard fields gives `None`, so the bench does not wait on them.
    #[test]
    fn diskstats_discards_and_requests_in_flight_are_summed_over_devices() {
        let stats = "\
 254       0 vda 5 0 40 1 7 2 900 3 4 10 12 6 0 800 9 11 13
 254       1 vda1 1 0 8 0 2 0 100 0 1 2 3 3 0 100 1 0 0
";
        assert_eq!(crate::diskstats_discards_and_in_flight(stats), Some((9, 5)));
        assert_eq!(crate::diskstats_discards_and_in_flight(" 8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n"), None, "no discard fields");
        assert_eq!(crate::diskstats_discards_and_in_flight(" 8 0 sda 1 2 3 4 5 6 7 8 x 10 11 12 13 14 15\n"), None, "not a number");
    }

    #[test]
    fn split_keeps_order_and_every_item_in_at_most_the_given_parts() {
        assert_eq!(split((0..10).collect(), 3), vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        assert_eq!(split((0..2).collect(), 32), vec![vec![0], vec![1]]);
        assert!(split(Vec::<u8>::new(), 4).is_empty());
    }

    #[test]
    fn each_parallel_runs_every_item_and_reports_a_failure() {
        let seen = std::sync::Mutex::new(Vec::new());
        each_parallel((0..100).collect(), 7, |i: u32| {
            seen.lock().expect("seen").push(i);
            Ok::<(), ()>(())
        })
        .expect("no failure");
        let mut seen = seen.into_inner().expect("seen");
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(each_parallel((0..100).collect(), 7, |i: u32| if i == 42 { Err(i) } else { Ok(()) }), Err(42));
    }
}
