//! The key-value peer a user might pick instead of camvault: the same frames stored in `fjall`
//! (an LSM-tree engine), one key per frame, `camera (u32 BE) || capture time (i64 BE)`, with
//! key-value separation (large values go to blob files, as a user storing video would configure)
//! and compression off (video does not compress). Durability is matched to the engine's:
//! group commit is a journal fsync (`PersistMode::SyncData`) every flush period from a
//! background thread, per-GOP is one at every key frame, OS write-back is none until the end.
//! Nothing is encrypted: the peer is given the advantage.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fjall::{Config, KvSeparationOptions, PartitionCreateOptions, PersistMode};

use crate::{cpu_seconds, dir_bytes, disk_write_bytes, drive, rss_bytes, Policy, RunResult, Scenario, T0_US};

fn key(stream: usize, ts_us: i64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&(stream as u32).to_be_bytes());
    k[4..].copy_from_slice(&ts_us.to_be_bytes());
    k
}

/// Writes the scenario's frames into fjall and reads them back.
pub fn run_peer(dir: &Path, sc: &Scenario, payload: &[u8]) -> Result<RunResult, fjall::Error> {
    let keyspace = Config::new(dir).open()?;
    let frames_part = keyspace.open_partition(
        "frames",
        PartitionCreateOptions::default().with_kv_separation(KvSeparationOptions::default()).manual_journal_persist(true),
    )?;
    crate::start_line(dir, sc.nominal_bytes());
    let rss0 = rss_bytes();
    let cpu0 = cpu_seconds();
    let io0 = disk_write_bytes();
    let stop = AtomicBool::new(false);
    let failed = AtomicBool::new(false);
    let start = Instant::now();
    let frame_us = sc.profile.frame_us();
    let mut peak = 0;
    let payload_bytes = std::thread::scope(|s| {
        let flusher = s.spawn(|| {
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
                if sc.policy == Policy::Interval && last.elapsed() >= sc.flush {
                    last = Instant::now();
                    if keyspace.persist(PersistMode::SyncData).is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                }
            }
        });
        let states = drive(sc, vec![0u64; sc.streams], |bytes, stream, n, phase| {
            let (size, is_key) = sc.profile.frame_bytes(n, phase);
            if is_key && n > 0 && sc.policy == Policy::PerGop && keyspace.persist(PersistMode::SyncData).is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            match frames_part.insert(key(stream, T0_US + n as i64 * frame_us), &payload[..size]) {
                Ok(()) => *bytes += size as u64,
                Err(_) => failed.store(true, Ordering::Relaxed),
            }
        });
        peak = rss_bytes();
        if keyspace.persist(PersistMode::SyncData).is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        stop.store(true, Ordering::Relaxed);
        let _ = flusher.join();
        states.iter().sum::<u64>()
    });
    let elapsed = start.elapsed();
    let cpu = cpu_seconds();
    if failed.load(Ordering::Relaxed) {
        return Err(fjall::Error::Io(std::io::Error::other("a write or persist failed during the run")));
    }
    // Read back: each stream's frames, in key (time) order, with the generator's sizes and bytes.
    let mut verified = 0u64;
    for stream in 0..sc.streams {
        let phase = (stream % 25) as u32;
        let mut n = 0u64;
        for kv in frames_part.prefix((stream as u32).to_be_bytes()) {
            let (k, v) = kv?;
            let (size, _) = sc.profile.frame_bytes(n, phase);
            if k[..] != key(stream, T0_US + n as i64 * frame_us) || v[..] != payload[..size] {
                break;
            }
            n += 1;
        }
        verified += n;
    }
    let written = disk_write_bytes().saturating_sub(io0);
    drop(frames_part);
    drop(keyspace);
    Ok(RunResult {
        payload_bytes,
        disk_bytes: dir_bytes(dir).max(written),
        elapsed,
        frames: u64::from(sc.seconds) * u64::from(sc.profile.fps) * sc.streams as u64,
        rss_per_stream: peak.saturating_sub(rss0) / sc.streams as u64,
        verified_frames: verified,
        cpu_s: cpu - cpu0,
        connect: Duration::ZERO,
        close: Duration::ZERO,
    })
}
