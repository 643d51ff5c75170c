//! Feeds arbitrary bytes to every decoder by planting them as a segment, sidecar, catalog or key
//! store in an in-memory store and opening and reading it: nothing may panic, only errors.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use storage_core::io::{MemVfs, Vfs};
use storage_core::{Codec, Env, FlushPolicy, FrameIn, SimClock, Store, StoreConfig};

fn config() -> StoreConfig {
    let mut c = StoreConfig::new("/data");
    c.flush = FlushPolicy::OsWriteBack;
    c
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let vfs = MemVfs::new();
    let env = || Env { vfs: Arc::new(vfs.clone()), clock: Arc::new(SimClock::new(1_767_225_600_000_000)), kek: None };
    // A real store with one open segment, left as a crash would.
    if let Ok(store) = Store::open_with(config(), env()) {
        if let Ok(mut s) = store.open_stream("cam", Codec::H264, b"cfg") {
            for n in 0..30 {
                let _ = s.append(FrameIn { ts_us: 1_767_225_600_000_000 + n * 40_000, pts_90k: None, key: n % 10 == 0, payload: b"frame" });
            }
            let _ = s.flush();
            std::mem::forget(s);
        }
        std::mem::forget(store);
    }
    // Overwrite one of the store's files with the fuzz input at an offset chosen by the input.
    let files = vfs.files();
    let target = &files[data[0] as usize % files.len()];
    let bytes = &data[1..];
    if let Ok(f) = vfs.open(target) {
        let len = f.len().unwrap_or(0);
        let off = if len == 0 { 0 } else { u64::from(data[0]) * 7 % len };
        let _ = f.write_at(bytes, off);
        let _ = f.sync_data();
    }
    if let Ok(store) = Store::open_with(config(), env()) {
        if let Ok(r) = store.read("cam", i64::MIN + 1, i64::MAX) {
            for item in r {
                let _ = item;
            }
        }
        let _ = store.scrub();
    }
});
