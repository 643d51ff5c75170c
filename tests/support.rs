//! Shared helpers for the workspace integration tests: a store on the in-memory file system
//! with a simulated clock, a deterministic frame generator, and readers that collect frames.

use std::path::PathBuf;
use std::sync::Arc;

use storage_core::io::{MemVfs, Vfs};
use storage_core::{Clock, Env, FlushPolicy, Frame, ReadItem, SimClock, Store, StoreConfig};

/// 2026-01-01T00:00:00Z in microseconds: test time starts here.
pub const T0_US: i64 = 1_767_225_600_000_000;
/// 25 fps.
pub const FRAME_US: i64 = 40_000;

/// A config rooted at `/data` suited to tests: group commit only when asked.
pub fn test_config() -> StoreConfig {
    let mut c = StoreConfig::new("/data");
    c.key_dir = PathBuf::from("/keys");
    c.kek_dir = PathBuf::from("/kek");
    c.flush = FlushPolicy::OsWriteBack;
    c.segment_duration_us = 2_000_000;
    c.flusher_threads = 2;
    c.sweep_interval = None;
    c
}

/// Opens a store over `vfs` with a simulated clock.
pub fn open_mem(vfs: &MemVfs, config: StoreConfig) -> storage_core::Result<Store> {
    open_on(Arc::new(vfs.clone()), config)
}

/// Opens a store over any vfs with a simulated clock at [`T0_US`].
pub fn open_on(vfs: Arc<dyn Vfs>, config: StoreConfig) -> storage_core::Result<Store> {
    let clock: Arc<dyn Clock> = Arc::new(SimClock::new(T0_US));
    Store::open_with(config, Env { vfs, clock, kek: None })
}

/// A deterministic payload for frame `n` of `camera`: distinct per frame, sized like video
/// (large key frames, small others), prefixed so a test can find it.
pub fn payload(camera: &str, n: u64, key: bool) -> Vec<u8> {
    let len = if key { 6_000 + (n as usize % 7) * 500 } else { 700 + (n as usize % 13) * 90 };
    let mut v = format!("{camera}/{n}/").into_bytes();
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ camera.len() as u64;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

/// All frames (not configs) of `camera` in `[from, to)` as read from the store.
pub fn frames(store: &Store, camera: &str, from: i64, to: i64) -> Vec<Frame> {
    match store.read(camera, from, to) {
        Ok(r) => r
            .filter_map(|i| match i.expect("read item") {
                ReadItem::Frame(f) => Some(f),
                ReadItem::Config(_) => None,
            })
            .collect(),
        Err(storage_core::Error::NotFound(_)) => Vec::new(),
        Err(e) => panic!("read {camera}: {e}"),
    }
}

/// Every frame stored for `camera`.
pub fn all_frames(store: &Store, camera: &str) -> Vec<Frame> {
    frames(store, camera, i64::MIN + 1, i64::MAX)
}
