#![allow(missing_docs, reason = "criterion_group! generates an undocumented public function")]
//! Criterion benches for the hot paths, each beside its baseline in the same group:
//! append (encrypt + CRC + buffer) against a plain copy of the same bytes; seal; index lookup
//! and store open on a 1,000-camera x 30-day catalog.

use std::sync::Arc;

use camvault_benches::noise;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use storage_core::io::{MemVfs, Vfs};
use storage_core::{Codec, Env, FlushPolicy, FrameIn, SimClock, Store, StoreConfig};

const T0: i64 = 1_767_225_600_000_000;

fn mem_store(vfs: &MemVfs) -> Store {
    let mut cfg = StoreConfig::new("/data");
    cfg.flush = FlushPolicy::OsWriteBack;
    Store::open_with(cfg, Env { vfs: Arc::new(vfs.clone()), clock: Arc::new(SimClock::new(T0)), kek: None }).expect("open")
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    for size in [16 << 10, 128 << 10, 1 << 20] {
        let payload = noise(size);
        g.throughput(Throughput::Bytes(size as u64));
        // Baseline: the same bytes buffered into the same 256 KiB writes to a plain file.
        g.bench_with_input(BenchmarkId::new("raw_file_append", size), &payload, |b, p| {
            use std::os::unix::fs::FileExt;
            let dir = tempfile::tempdir().expect("tempdir");
            let file = std::fs::File::create(dir.path().join("raw")).expect("file");
            let mut buf: Vec<u8> = Vec::with_capacity(storage_core::WRITE_BATCH_BYTES + p.len());
            let mut off = 0u64;
            b.iter(|| {
                buf.extend_from_slice(p);
                if buf.len() >= storage_core::WRITE_BATCH_BYTES {
                    file.write_all_at(&buf, off).expect("write");
                    off += buf.len() as u64;
                    buf.clear();
                    // Start over like a segment roll (fresh pages, as the engine's new files get).
                    if off > 1 << 30 {
                        file.set_len(0).expect("truncate");
                        off = 0;
                    }
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("engine_append", size), &payload, |b, p| {
            // The real file system (page cache): an in-memory one would measure its own copies.
            let dir = tempfile::tempdir().expect("tempdir");
            let mut cfg = StoreConfig::new(dir.path());
            cfg.flush = FlushPolicy::OsWriteBack;
            let store = Store::open(cfg).expect("open");
            let mut s = store.open_stream("cam", Codec::H264, b"cfg").expect("stream");
            let mut n = 0i64;
            b.iter(|| {
                n += 1;
                s.append(FrameIn { ts_us: T0 + n * 40_000, pts_90k: None, key: n % 25 == 1, payload: p }).expect("append");
            })
        });
    }
    g.finish();
}

fn seal(c: &mut Criterion) {
    let payload = noise(16 << 10);
    c.bench_function("seal_segment_25_frames", |b| {
        let vfs = MemVfs::new();
        let store = mem_store(&vfs);
        let mut t = T0;
        b.iter_batched(
            || {
                let mut s = store.open_stream("cam", Codec::H264, b"cfg").expect("stream");
                for n in 0..25 {
                    t += 40_000;
                    s.append(FrameIn { ts_us: t, pts_90k: None, key: n == 0, payload: &payload }).expect("append");
                }
                s
            },
            |s| s.close().expect("close"),
            BatchSize::PerIteration,
        )
    });
}

/// 1,000 cameras x 30 days of 15-minute segments: 2.88 M catalog entries.
fn big_catalog(cameras: usize, days: u64) -> MemVfs {
    let vfs = MemVfs::new();
    let v: Arc<dyn Vfs> = Arc::new(vfs.clone());
    storage_core::testing::synthetic_catalog(&v, std::path::Path::new("/data"), cameras, days * 96, T0, 900_000_000).expect("catalog");
    vfs
}

fn index(c: &mut Criterion) {
    let cameras = 1000;
    let vfs = big_catalog(cameras, 30);
    let store = mem_store(&vfs);
    let mut g = c.benchmark_group("index_lookup_1000cam_30d");
    let mut n = 0u64;
    g.bench_function("segments_for_1s_range", |b| {
        b.iter(|| {
            n = n.wrapping_add(0x9E37_79B9);
            let cam = format!("cam-{:05}", n % cameras as u64);
            let t = T0 + ((n % (30 * 86_400)) as i64) * 1_000_000;
            store.segments(&cam, t, t + 1_000_000).expect("lookup")
        })
    });
    g.finish();
    drop(store);
    let mut g = c.benchmark_group("open");
    g.sample_size(10);
    g.bench_function("open_1000cam_30d_catalog", |b| b.iter(|| drop(mem_store(&vfs))));
    g.finish();
}

criterion_group!(benches, append, seal, index);
criterion_main!(benches);
