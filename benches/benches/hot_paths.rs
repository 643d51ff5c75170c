#![allow(missing_docs, reason = "criterion_group! generates an undocumented public function")]
//! Criterion benches for the hot paths, each beside its baseline in the same group:
//! append (encrypt + CRC + buffer) against a plain copy of the same bytes; seal; index lookup
//! and store open on a 1,000-camera x 30-day catalog.

use std::sync::Arc;

use camvault_benches::noise;
use camvault_server::digest::DigestAlgorithm;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use storage_core::io::{MemVfs, Vfs};
use storage_core::{Codec, Env, FlushPolicy, FrameIn, SimClock, Store, StoreConfig};

const T0: i64 = 1_767_225_600_000_000;

fn mem_store(vfs: &MemVfs) -> Store {
    let mut cfg = StoreConfig::new("/data");
    cfg.flush = FlushPolicy::OsWriteBack;
    // The streams are backfills of synthetic footage from T0: the store's clock is years later.
    Store::open_with(cfg, Env { vfs: Arc::new(vfs.clone()), clock: Arc::new(SimClock::new(T0 + 10 * 365 * 86_400_000_000)), kek: None })
        .expect("open")
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
        // The server's check at the door (an Annex B access unit of the codec, DURABILITY.md "The
        // publisher's contract"), beside the append it guards: a frame starting with its slice,
        // as most do; it stops at the first slice NAL, so its cost does not grow with the size.
        let mut framed = vec![0, 0, 0, 1, 0x65];
        framed.extend_from_slice(&payload);
        g.bench_with_input(BenchmarkId::new("door_check", size), &framed, |b, p| {
            b.iter(|| camvault_server::h26x::check_access_unit(Codec::H264, std::hint::black_box(p)).expect("an access unit"))
        });
        g.bench_with_input(BenchmarkId::new("engine_append", size), &payload, |b, p| {
            // The real file system (page cache): an in-memory one would measure its own copies.
            let dir = tempfile::tempdir().expect("tempdir");
            let mut cfg = StoreConfig::new(dir.path());
            cfg.flush = FlushPolicy::OsWriteBack;
            let store = Store::open(cfg).expect("open");
            let mut s = store.open_stream_as("cam", Codec::H264, b"cfg", storage_core::StreamKind::Backfill).expect("stream");
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
                let mut s = store.open_stream_as("cam", Codec::H264, b"cfg", storage_core::StreamKind::Backfill).expect("stream");
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

/// The engine's per-record cipher work, bare: AES-256-GCM in place with a 12-byte nonce and a
/// 32-byte AAD (`ring`, as `SegmentCipher::seal`), and the record CRC32, beside a plain copy of
/// the same bytes. The export manifest's digests as the server computes them (BLAKE3, the
/// default, and SHA-256 from `sha2`), and `ring`'s SHA-256 for comparison.
fn encrypt(c: &mut Criterion) {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let mut g = c.benchmark_group("encrypt");
    let cipher = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).expect("key"));
    let aad = [9u8; 32];
    for size in [16 << 10, 128 << 10, 1 << 20] {
        let src = noise(size);
        let mut buf = src.clone();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("memcpy", size), |b| b.iter(|| buf.copy_from_slice(&src)));
        let mut n = 0u64;
        g.bench_function(BenchmarkId::new("aes256gcm_seal", size), |b| {
            b.iter(|| {
                n += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_be_bytes());
                cipher.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut buf).expect("seal")
            })
        });
        g.bench_function(BenchmarkId::new("crc32", size), |b| b.iter(|| crc32fast::hash(&buf)));
        g.bench_function(BenchmarkId::new("sha256_ring", size), |b| b.iter(|| ring::digest::digest(&ring::digest::SHA256, &buf)));
        for alg in [DigestAlgorithm::Blake3, DigestAlgorithm::Sha256] {
            g.bench_function(BenchmarkId::new(format!("export_digest_{}", alg.name()), size), |b| {
                b.iter(|| {
                    let mut h = alg.hasher();
                    h.update(&buf);
                    h.finalize_hex()
                })
            });
        }
    }
    g.finish();
}

/// Export muxing of one GOP (25 frames of 4 Mbit/s video: ~500 KB): Annex B to length-prefixed
/// samples and the `moof` + `mdat` fragment, beside a plain copy of the same bytes.
fn mp4_boxes(c: &mut Criterion) {
    use camvault_server::{h26x, mp4};
    let profile = camvault_benches::Profile::HD_4MBIT;
    let payload = noise(1 << 20);
    // Annex B access units: a start code and a slice NAL header before noise without start codes.
    let aus: Vec<Vec<u8>> = (0..25u64)
        .map(|n| {
            let (size, key) = profile.frame_bytes(n, 0);
            let mut au = vec![0, 0, 0, 1, if key { 0x65 } else { 0x41 }];
            au.extend(payload[..size].iter().map(|&b| if b == 0 { 0x80 } else { b }));
            au
        })
        .collect();
    let total: usize = aus.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group("mp4_fragment_1s_gop");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("memcpy_same_bytes", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(total);
            aus.iter().for_each(|au| out.extend_from_slice(au));
            out
        })
    });
    g.bench_function("length_prefix_and_moof_mdat", |b| {
        b.iter(|| {
            let mut data = Vec::with_capacity(total);
            let mut samples = Vec::with_capacity(aus.len());
            for (i, au) in aus.iter().enumerate() {
                let before = data.len();
                h26x::to_length_prefixed(storage_core::Codec::H264, au, &mut data);
                samples.push(mp4::Sample { size: (data.len() - before) as u32, duration: 3600, key: i == 0, cto: 0 });
            }
            mp4::fragment(1, 0, &samples, &data)
        })
    });
    g.finish();
}

criterion_group!(benches, append, seal, index, encrypt, mp4_boxes);
criterion_main!(benches);
