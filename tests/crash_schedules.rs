//! Seeded crash schedules across every write path at once: appends and group commits, seals,
//! retention sweeps (key rotation, unlinks), the control log (holds) and the audit log. Each
//! seed draws a workload and a crash point; the disk is rebuilt as the crash would leave it
//! in each of three ways and the store reopened. Invariants: the store opens (a crash is never
//! corruption), every frame reported durable and not yet expired reads back byte-exact,
//! nothing never appended appears, the audit chain verifies, and new writes are taken.
//!
//! `CAMVAULT_CRASH_SCHEDULES` sets how many (seed, crash mode) schedules run (default 10,200);
//! the count run is printed, and written to `target/tmp/crash_schedules.txt` for `.ci/run`.

use std::collections::HashMap;
use std::sync::Arc;

use camvault_tests::{payload, test_config, FRAME_US, T0_US};
use storage_core::audit::AuditRecord;
use storage_core::io::{CrashMode, FaultKind, FaultyVfs, MemVfs, Vfs};
use storage_core::retention::HoldRequest;
use storage_core::{Clock, Codec, Env, FrameIn, SimClock, Store, StreamWriter};

const DAY_US: i64 = 86_400_000_000;
const CAMERAS: [&str; 3] = ["cam-a", "cam-b", "cam-c"];
const MODES: [CrashMode; 3] = [CrashMode::LoseUnsynced, CrashMode::TearLastWrite, CrashMode::KeepUnsynced];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One appended frame as the model knows it.
#[derive(Clone, Copy)]
struct Appended {
    ts_us: i64,
    n: u64,
    /// Appended before the clock last jumped past the retention: a sweep may have erased it.
    expirable: bool,
    durable: bool,
}

#[derive(Default)]
struct Model {
    frames: HashMap<&'static str, Vec<Appended>>,
}

fn open(vfs: Arc<dyn Vfs>, clock: &Arc<SimClock>) -> storage_core::Result<Store> {
    let c: Arc<dyn Clock> = clock.clone();
    Store::open_with(test_config(), Env { vfs, clock: c, kek: None })
}

/// Marks every frame of `camera`'s current stream up to `durable_seq` durable. `first` is the
/// index in the model of the stream's first frame.
fn mark_durable(model: &mut Model, camera: &'static str, first: usize, durable_seq: u64) {
    if let Some(v) = model.frames.get_mut(camera) {
        for f in v.iter_mut().skip(first).take(durable_seq as usize) {
            f.durable = true;
        }
    }
}

/// Runs seed `seed`'s workload until it ends or the injected fault stops it.
fn workload(store: &Store, clock: &SimClock, rng: &mut Rng, model: &mut Model) {
    let mut streams: HashMap<&'static str, (StreamWriter, usize)> = HashMap::new();
    let mut next_n: HashMap<&'static str, u64> = HashMap::new();
    let mut next_ts: HashMap<&'static str, i64> = HashMap::new();
    for _ in 0..(8 + rng.below(24)) {
        match rng.below(10) {
            0..=4 => {
                let cam = CAMERAS[rng.below(3) as usize];
                if !streams.contains_key(cam) {
                    let Ok(s) = store.open_stream(cam, Codec::H264, b"sps-pps") else { return };
                    let first = model.frames.get(cam).map_or(0, Vec::len);
                    streams.insert(cam, (s, first));
                }
                let (s, first) = streams.get_mut(cam).expect("stream");
                let ts = next_ts.entry(cam).or_insert(clock.now_us());
                *ts = (*ts).max(clock.now_us());
                for _ in 0..(1 + rng.below(30)) {
                    let n = *next_n.entry(cam).or_insert(0);
                    let key = n.is_multiple_of(25);
                    let res = s.append(FrameIn { ts_us: *ts, pts_90k: None, key, payload: &payload(cam, n, key) });
                    let durable = s.durable_seq();
                    let first = *first;
                    match res {
                        Ok(_) => {
                            model.frames.entry(cam).or_default().push(Appended { ts_us: *ts, n, expirable: false, durable: false });
                            next_n.insert(cam, n + 1);
                            *ts += FRAME_US;
                            mark_durable(model, cam, first, durable);
                        }
                        Err(_) => {
                            mark_durable(model, cam, first, durable);
                            return;
                        }
                    }
                }
            }
            5 => {
                let flushed = store.flush();
                for (cam, (s, first)) in &streams {
                    mark_durable(model, cam, *first, s.durable_seq());
                }
                if flushed.is_err() {
                    return;
                }
            }
            6 => {
                let cam = CAMERAS[rng.below(3) as usize];
                if let Some((s, first)) = streams.remove(cam) {
                    let appended = model.frames.get(cam).map_or(0, Vec::len) - first;
                    if s.close().is_err() {
                        return;
                    }
                    mark_durable(model, cam, first, appended as u64);
                }
            }
            7 => {
                let rec = AuditRecord { actor: "op".into(), action: "video.read".into(), purpose: "review".into(), ..Default::default() };
                if store.audit(rec).is_err() {
                    return;
                }
            }
            8 => {
                let hold = HoldRequest {
                    case_ref: format!("HS-{}", rng.below(1000)),
                    cameras: vec![CAMERAS[rng.below(3) as usize].into()],
                    from_us: clock.now_us() + 400 * DAY_US,
                    to_us: clock.now_us() + 401 * DAY_US,
                    placed_by: "prosecutor".into(),
                    reason: "case".into(),
                };
                if store.place_hold(hold).is_err() {
                    return;
                }
            }
            _ => {
                // A month passes: everything recorded so far may be erased by the sweep (a
                // segment still open is not).
                clock.set_us(clock.now_us() + 31 * DAY_US);
                for v in model.frames.values_mut() {
                    for f in v.iter_mut() {
                        f.expirable = true;
                    }
                }
                if store.sweep().is_err() {
                    return;
                }
            }
        }
    }
}

fn check(store: &Store, model: &Model, what: &str, now_us: i64) {
    for cam in CAMERAS {
        let appended = model.frames.get(cam).map(Vec::as_slice).unwrap_or_default();
        let by_ts: HashMap<i64, &Appended> = appended.iter().map(|f| (f.ts_us, f)).collect();
        let got = camvault_tests::all_frames(store, cam);
        let mut seen = std::collections::HashSet::new();
        for f in &got {
            let a = by_ts.get(&f.ts_us).unwrap_or_else(|| panic!("{what}: {cam} shows a frame at {} never appended", f.ts_us));
            assert_eq!(f.payload.as_ref(), payload(cam, a.n, a.n.is_multiple_of(25)).as_slice(), "{what}: {cam} frame {} bytes", a.n);
            assert!(seen.insert(f.ts_us), "{what}: {cam} frame at {} twice", f.ts_us);
        }
        for a in appended.iter().filter(|a| a.durable && !a.expirable) {
            assert!(seen.contains(&a.ts_us), "{what}: {cam} lost durable frame {} at {}", a.n, a.ts_us);
        }
    }
    let v = store.verify_audit().expect("verify");
    assert!(v.problem.is_none(), "{what}: audit log: {:?}", v.problem);
    assert!(store.corruptions().is_empty(), "{what}: a crash is not corruption: {:?}", store.corruptions());
    let mut s = store.open_stream("cam-after", Codec::H264, b"c").unwrap_or_else(|e| panic!("{what}: stream after crash: {e}"));
    s.append(FrameIn { ts_us: now_us, pts_90k: None, key: true, payload: b"after" }).unwrap_or_else(|e| panic!("{what}: {e}"));
    s.close().unwrap_or_else(|e| panic!("{what}: close after crash: {e}"));
}

#[test]
fn seeded_crash_schedules_keep_every_invariant() {
    let schedules: u64 = std::env::var("CAMVAULT_CRASH_SCHEDULES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_200);
    let mut run = 0u64;
    let mut faulted = 0u64;
    let mut seed = 0u64;
    while run < schedules {
        seed += 1;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let mem = MemVfs::new();
        let clock = Arc::new(SimClock::new(T0_US));
        let faulty = FaultyVfs::new(Arc::new(mem.clone()));
        // Crash points spread over the whole workload, the store's creation included.
        faulty.fail_after(rng.below(400), FaultKind::Eio);
        let mut model = Model::default();
        if let Ok(store) = open(Arc::new(faulty.clone()), &clock) {
            workload(&store, &clock, &mut rng, &mut model);
            // A store that hit an I/O error is abandoned as a crashed process would be.
            std::mem::forget(store);
        }
        if faulty.fired() {
            faulted += 1;
        }
        for mode in MODES {
            let image = mem.crash(mode);
            let what = format!("seed {seed} ({mode:?})");
            let store = open(Arc::new(image), &clock).unwrap_or_else(|e| panic!("{what}: reopen after the crash: {e}"));
            check(&store, &model, &what, clock.now_us());
            run += 1;
        }
    }
    let summary = format!("crash schedules run: {run} ({seed} seeds, {faulted} ended by the injected fault)");
    println!("{summary}");
    // For .ci/run to print after the test run (libtest captures a passing test's output).
    let _ = std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("crash_schedules.txt"), format!("{summary}\n"));
    assert!(faulted * 3 > seed, "most schedules must crash inside the workload: {faulted} of {seed}");
}
