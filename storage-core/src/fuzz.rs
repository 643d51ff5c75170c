//! Fuzz targets over every file the store decodes (DESIGN.md "Fuzzing"). Each target plants
//! arbitrary bytes as one file of a real store image and opens, reads, scrubs and verifies the
//! store: whatever the bytes, the store returns errors, never panics, never allocates what the
//! file merely claims, and never loops on a stated count.
//!
//! The first input byte chooses whether the harness re-computes the file's CRCs after planting:
//! a CRC is not a signature (anyone who can write the disk can forge one), and without the
//! fix-up a fuzzer rarely gets past the first check into the decoders behind it.
//!
//! The `fuzz/` crate runs these under libFuzzer; the tests replay the seed corpus and seeded
//! mutations of it on the stable toolchain.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use crate::audit::AuditRecord;
use crate::io::{write_file_atomic, CrashMode, MemVfs, Vfs};
use crate::retention::HoldRequest;
use crate::{Codec, Env, FlushPolicy, FrameIn, SimClock, Store, StoreConfig};

/// The files a target can plant its bytes as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFile {
    /// A sealed segment (header, records, footer).
    SealedSegment,
    /// A segment left open by a crash (recovered at open).
    OpenSegment,
    /// The key-frame sidecar of the open segment.
    Sidecar,
    /// The catalog log.
    Catalog,
    /// The control log (retention settings and holds).
    Control,
    /// The audit log.
    Audit,
    /// The audit anchor in the key directory.
    AuditAnchor,
    /// The key store's current generation.
    KeyStore,
    /// The file KEK that wraps the key store.
    Kek,
    /// The audit log's signing key.
    SigningKey,
    /// The root's `store.id`.
    StoreId,
    /// A decommission marker in the key directory.
    DecommissionMarker,
}

impl StoreFile {
    /// Every kind, each a fuzz target.
    pub const ALL: [StoreFile; 12] = [
        StoreFile::SealedSegment,
        StoreFile::OpenSegment,
        StoreFile::Sidecar,
        StoreFile::Catalog,
        StoreFile::Control,
        StoreFile::Audit,
        StoreFile::AuditAnchor,
        StoreFile::KeyStore,
        StoreFile::Kek,
        StoreFile::SigningKey,
        StoreFile::StoreId,
        StoreFile::DecommissionMarker,
    ];

    /// The target's name (its folder under `fuzz/corpus`).
    pub fn name(self) -> &'static str {
        match self {
            StoreFile::SealedSegment => "sealed_segment",
            StoreFile::OpenSegment => "open_segment",
            StoreFile::Sidecar => "sidecar",
            StoreFile::Catalog => "catalog",
            StoreFile::Control => "control_log",
            StoreFile::Audit => "audit_log",
            StoreFile::AuditAnchor => "audit_anchor",
            StoreFile::KeyStore => "key_store",
            StoreFile::Kek => "kek_file",
            StoreFile::SigningKey => "signing_key",
            StoreFile::StoreId => "store_id",
            StoreFile::DecommissionMarker => "decommission_marker",
        }
    }
}

const ROOT: &str = "/data";
const T0_US: i64 = 1_767_225_600_000_000;
const FRAME_US: i64 = 40_000;
const CAMERA: &str = "cam-1";

fn config() -> StoreConfig {
    let mut c = StoreConfig::new(ROOT);
    c.flush = FlushPolicy::OsWriteBack;
    c.sweep_interval = None;
    c
}

fn env(vfs: &MemVfs) -> Env {
    Env { vfs: Arc::new(vfs.clone()), clock: Arc::new(SimClock::new(T0_US + 60_000_000)), kek: None }
}

/// A store with one sealed and one open segment (and its sidecar), a retention setting, a
/// hold and audit entries with a checkpoint: every file kind, each as the store wrote it.
static IMAGE: LazyLock<MemVfs> = LazyLock::new(|| build_image().unwrap_or_default());

fn build_image() -> crate::Result<MemVfs> {
    let vfs = MemVfs::new();
    let store = Store::open_with(config(), env(&vfs))?;
    store.set_retention(CAMERA, 45, "admin", "fixture")?;
    store.place_hold(HoldRequest {
        case_ref: "case-1".into(),
        cameras: vec![CAMERA.into()],
        from_us: T0_US,
        to_us: T0_US + 10_000_000,
        placed_by: "admin".into(),
        reason: "fixture".into(),
    })?;
    store.audit(AuditRecord {
        actor: "viewer".into(),
        action: "video.read".into(),
        cameras: vec![CAMERA.into()],
        ..AuditRecord::default()
    })?;
    let frame = |n: i64, payload: &'static [u8]| FrameIn { ts_us: T0_US + n * FRAME_US, pts_90k: Some(n * 3600), key: n % 5 == 0, payload };
    let mut sealed = store.open_stream(CAMERA, Codec::H264, b"\0\0\0\x01\x67config")?;
    for n in 0..12 {
        sealed.append(frame(n, b"\0\0\0\x01\x65sealed frame"))?;
    }
    sealed.close()?;
    store.audit_checkpoint()?;
    let mut open = store.open_stream(CAMERA, Codec::H264, b"\0\0\0\x01\x67config")?;
    for n in 100..112 {
        open.append(frame(n, b"\0\0\0\x01\x65open frame"))?;
    }
    open.flush()?;
    std::mem::forget(open);
    store.abandon();
    Ok(vfs.crash(CrashMode::KeepUnsynced))
}

/// Where `kind` lives in `vfs`, if the image has it.
fn path_of(vfs: &MemVfs, kind: StoreFile) -> Option<PathBuf> {
    let files = vfs.files();
    let name = |p: &PathBuf| p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let seg = |open: bool| {
        let mut segs: Vec<&PathBuf> = files.iter().filter(|p| p.starts_with(Path::new(ROOT).join("segments"))).collect();
        segs.retain(|p| name(p).ends_with(".seg"));
        segs.sort();
        if open {
            segs.last().map(|p| (*p).clone())
        } else {
            segs.first().map(|p| (*p).clone())
        }
    };
    let keys = Path::new(ROOT).join("keys");
    match kind {
        StoreFile::SealedSegment => seg(false),
        StoreFile::OpenSegment => seg(true),
        StoreFile::Sidecar => files.iter().find(|p| name(p).ends_with(".kfi")).cloned(),
        StoreFile::Catalog => Some(Path::new(ROOT).join("catalog/catalog.log")),
        StoreFile::Control => Some(Path::new(ROOT).join("control/control.log")),
        StoreFile::Audit => Some(Path::new(ROOT).join("audit/audit.log")),
        StoreFile::AuditAnchor => Some(keys.join(crate::audit::ANCHOR_FILE)),
        StoreFile::KeyStore => files.iter().filter(|p| p.starts_with(&keys) && name(p).starts_with("keystore-")).max().cloned(),
        StoreFile::Kek => files.iter().find(|p| p.starts_with(Path::new(ROOT).join("kek")) && name(p).starts_with("kek-")).cloned(),
        StoreFile::SigningKey => Some(keys.join("signing.key")),
        StoreFile::StoreId => Some(Path::new(ROOT).join(crate::identity::FILE_NAME)),
        StoreFile::DecommissionMarker => Some(keys.join(crate::store::DECOMMISSION_MARKER)),
    }
}

/// The file of `kind` as the store wrote it: the seed of its target's corpus (with the
/// "fix CRCs" flag byte in front).
pub fn seed(kind: StoreFile) -> Vec<u8> {
    let mut out = vec![0u8];
    let vfs = IMAGE.crash(CrashMode::KeepUnsynced);
    if kind == StoreFile::DecommissionMarker {
        // A decommission is refused while video is unexpired or held: a year later, with the
        // hold released, as an operator would.
        // Recovery seals the open segment first, at the image's own time.
        drop(Store::open_with(config(), env(&vfs)));
        let later = Env { clock: Arc::new(SimClock::new(T0_US + 365 * 86_400_000_000)), ..env(&vfs) };
        if let Ok(store) = Store::open_with(config(), later) {
            let _ = store.release_hold(1, "admin", "fixture").and_then(|_| store.decommission("admin", "fixture"));
        }
    }
    if let Some(bytes) = path_of(&vfs, kind).and_then(|p| vfs.contents(&p)) {
        out.extend_from_slice(&bytes);
    }
    out
}

/// Writes a CRC-32 (little-endian) at `crc_at` over `over`, when both lie inside `b`.
fn put_crc(b: &mut [u8], crc_at: usize, over: std::ops::Range<usize>) {
    if over.end <= b.len() && crc_at + 4 <= b.len() && over.start <= over.end {
        let crc = crc32fast::hash(&b[over]);
        b[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Re-computes every CRC of a file of `kind`, following its framing as far as it goes.
fn fix_crcs(kind: StoreFile, b: &mut [u8]) {
    use crate::segment::format as seg;
    let le32 = |b: &[u8], at: usize| b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize);
    match kind {
        StoreFile::SealedSegment | StoreFile::OpenSegment => {
            put_crc(b, seg::HEADER_LEN - 4, 0..seg::HEADER_LEN - 4);
            let mut at = seg::HEADER_LEN;
            while let Some(body) = le32(b, at + 4) {
                let end = at.saturating_add(seg::RECORD_HEADER_LEN).saturating_add(body);
                if end > b.len() {
                    break;
                }
                put_crc(b, at, at + 4..end);
                at = end;
            }
        }
        StoreFile::Sidecar => {
            for at in (0..b.len()).step_by(crate::segment::writer::KFI_ENTRY_LEN) {
                put_crc(b, at, at + 4..at + crate::segment::writer::KFI_ENTRY_LEN);
            }
        }
        StoreFile::Catalog | StoreFile::Control | StoreFile::Audit => {
            put_crc(b, crate::log::HEADER_LEN - 4, 0..crate::log::HEADER_LEN - 4);
            let mut at = crate::log::HEADER_LEN;
            while let Some(len) = le32(b, at + 4) {
                let end = at.saturating_add(crate::log::FRAME_LEN).saturating_add(len);
                if end > b.len() {
                    break;
                }
                put_crc(b, at, at + 4..end);
                at = end;
            }
        }
        StoreFile::AuditAnchor => {
            put_crc(b, 56, 0..56);
            put_crc(b, 64 + 56, 64..64 + 56);
        }
        StoreFile::KeyStore => {
            use crate::keys::{KEY_STORE_HEADER_LEN as HEADER_LEN, KEY_STORE_RECORD_LEN as RECORD_LEN};
            put_crc(b, HEADER_LEN - 4, 0..HEADER_LEN - 4);
            let mut at = HEADER_LEN;
            while at + RECORD_LEN <= b.len() {
                put_crc(b, at, at + 4..at + RECORD_LEN);
                at += RECORD_LEN;
            }
        }
        StoreFile::Kek | StoreFile::SigningKey | StoreFile::StoreId => put_crc(b, 40, 0..40),
        StoreFile::DecommissionMarker => {}
    }
}

/// The target: plants `data` (after its flag byte) as the file of `kind` in a copy of the
/// image, then opens the store, reads every frame, scrubs, verifies the audit log, and runs
/// the offline scrub. Only errors may come out.
pub fn store_file(kind: StoreFile, data: &[u8]) {
    let Some((&flags, body)) = data.split_first() else { return };
    let vfs = IMAGE.crash(CrashMode::KeepUnsynced);
    let Some(path) = path_of(&vfs, kind) else { return };
    let mut bytes = body.to_vec();
    if flags & 1 == 1 {
        fix_crcs(kind, &mut bytes);
    }
    let dir = path.parent().unwrap_or(Path::new(ROOT)).to_path_buf();
    if write_file_atomic(&vfs, &dir, &path, &bytes).is_err() {
        return;
    }
    let shared: Arc<dyn Vfs> = Arc::new(vfs.clone());
    let _ = crate::offline::scrub_with(&shared, Path::new(ROOT));
    if let Ok(store) = Store::open_with(config(), env(&vfs)) {
        if let Ok(frames) = store.read(CAMERA, i64::MIN, i64::MAX) {
            frames.for_each(drop);
        }
        let _ = store.scrub();
        let _ = store.verify_audit();
        let _ = store.recordings(CAMERA, i64::MIN, i64::MAX);
        let _ = store.sweep();
        // A second open sees what the first one left.
        drop(store);
        if let Ok(store) = Store::open_with(config(), env(&vfs)) {
            let _ = store.verify_audit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target's seed is a real file of the store, and the image opens as it is: a seed
    /// that is empty or an image that is refused would fuzz nothing but the first check.
    #[test]
    fn every_seed_is_a_real_file_and_the_image_opens() {
        for kind in StoreFile::ALL {
            let s = seed(kind);
            assert!(s.len() > 1, "{} has no seed (files: {:?})", kind.name(), IMAGE.files());
        }
        let store = Store::open_with(config(), env(&IMAGE.crash(CrashMode::KeepUnsynced))).expect("the image opens");
        let items: Vec<_> = store.read(CAMERA, i64::MIN, i64::MAX).expect("read").collect::<crate::Result<_>>().expect("frames");
        let frames = items.iter().filter(|i| matches!(i, crate::ReadItem::Frame(_))).count();
        assert_eq!(frames, 24, "the sealed and the recovered open segment");
    }

    /// With the fix-up, a planted seed is the file as written: the CRC walkers follow the real
    /// framing (a walker that got it wrong would change the bytes).
    #[test]
    fn crc_fix_up_leaves_a_real_file_unchanged() {
        for kind in StoreFile::ALL {
            let s = seed(kind);
            let mut fixed = s[1..].to_vec();
            fix_crcs(kind, &mut fixed);
            assert!(fixed == s[1..], "{}: the fix-up changed a file the store wrote", kind.name());
        }
    }
}
