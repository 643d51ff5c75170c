//! Fixtures for benchmarks and tests that need a large store without writing its video.

use std::path::Path;
use std::sync::Arc;

use crate::catalog::{Catalog, CatalogRecord, SealedInfo};
use crate::io::Vfs;
use crate::{Result, SegmentId};

/// Writes a catalog describing `cameras` x `segments_per_camera` sealed segments of
/// `segment_us` each (starting at `t0_us`), as a store of that size would have. The segment
/// files themselves are not written: opening the store must not need them, which is what the
/// startup benchmark measures.
pub fn synthetic_catalog(
    vfs: &Arc<dyn Vfs>,
    root: &Path,
    cameras: usize,
    segments_per_camera: u64,
    t0_us: i64,
    segment_us: i64,
) -> Result<()> {
    // A store with segments opens only with its key store: an empty generation under a file
    // KEK in the default directories (the segments have no files, so no key is ever asked for).
    let id = fixture_identity(vfs, root, &root.join("keys"))?;
    let kek: Arc<dyn crate::keys::KekProvider> = Arc::new(crate::keys::FileKekProvider::open(vfs.clone(), root.join("kek"))?);
    kek.bind_store(id)?;
    drop(crate::keys::KeyStore::open(vfs.clone(), &root.join("keys"), kek, t0_us, true)?);
    synthetic_catalog_from(vfs, root, cameras, segments_per_camera, t0_us, segment_us, 1)
}

fn synthetic_catalog_from(
    vfs: &Arc<dyn Vfs>,
    root: &Path,
    cameras: usize,
    segments_per_camera: u64,
    t0_us: i64,
    segment_us: i64,
    first_id: u64,
) -> Result<()> {
    fixture_identity(vfs, root, &root.join("keys"))?;
    let loaded = Catalog::open(vfs, &root.join("catalog"), crate::log::Access::Write { keep_torn: false })?;
    let mut cat = loaded.catalog;
    let mut next = loaded.max_segment.map_or(first_id, |s| s.0 + 1).max(first_id);
    let mut batch = Vec::with_capacity(1 << 20);
    for c in 0..cameras {
        let camera = format!("cam-{c:05}");
        for s in 0..segments_per_camera {
            let id = SegmentId(next);
            next += 1;
            let first = t0_us + s as i64 * segment_us;
            batch.push(CatalogRecord::Open { segment: id, created_us: first, camera: camera.clone() });
            let info = SealedInfo {
                first_ts_us: first,
                last_ts_us: first + segment_us - 40_000,
                frame_count: (segment_us / 40_000) as u32,
                keyframe_count: (segment_us / 1_000_000) as u32,
                footer_offset: 450 << 20,
                file_len: (450 << 20) + 32 + 32 + 24 * 900,
                payload_bytes: 450 << 20,
                sealed_us: first + segment_us,
            };
            batch.push(CatalogRecord::Sealed { segment: id, info });
            if batch.len() >= 100_000 {
                cat.append_many(&batch)?;
                batch.clear();
            }
        }
    }
    cat.append_many(&batch)
}

/// Whether `key` decrypts the first record of the segment file `bytes` (for the disk-image
/// adversary test: "can this key read this ciphertext?").
pub fn key_opens_segment(bytes: &[u8], key: &crate::keys::DataKey) -> bool {
    use crate::segment::format::{aad, nonce, RecordHeader, SegmentHeader, HEADER_LEN, RECORD_HEADER_LEN, TAG_LEN};
    let Ok(h) = SegmentHeader::decode(bytes) else { return false };
    let Some(rh) = bytes.get(HEADER_LEN..HEADER_LEN + RECORD_HEADER_LEN).and_then(RecordHeader::decode) else { return false };
    let start = HEADER_LEN + RECORD_HEADER_LEN;
    let Some(body) = bytes.get(start..start + rh.body_len as usize) else { return false };
    if body.len() < TAG_LEN {
        return false;
    }
    let (ct, tag) = body.split_at(body.len() - TAG_LEN);
    let mut buf = ct.to_vec();
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(tag);
    crate::keys::SegmentCipher::new(key).open(&nonce(rh.ordinal), &aad(h.segment, &bytes[HEADER_LEN..start]), &mut buf, &t)
}

/// Makes `root` (with keys in `key_dir`) a store's root, as the store's own creation would, so
/// that a fixture written into it opens: a store never adopts a root holding files but no
/// identity.
fn fixture_identity(vfs: &Arc<dyn Vfs>, root: &Path, key_dir: &Path) -> Result<crate::StoreId> {
    let (id, created) = crate::identity::establish(vfs, root, key_dir, 0)?;
    if created {
        crate::identity::commit_root(vfs, root, id, 0)?;
    }
    Ok(id)
}

/// A store of `cameras` x `segments_per_camera` sealed segments `segment_us` long from `t0_us`,
/// written without video: catalog records, real wrapped data keys in the key store, and segment
/// files holding only their header (so erasure unlinks real files). For the sweep benchmark.
pub fn synthetic_store(
    vfs: &Arc<dyn Vfs>,
    config: &crate::StoreConfig,
    kek: Arc<dyn crate::keys::KekProvider>,
    cameras: usize,
    segments_per_camera: u64,
    t0_us: i64,
    segment_us: i64,
) -> Result<()> {
    use crate::keys::{DataKey, KeyStore};
    use crate::segment::format::SegmentHeader;
    use crate::segment::writer::segment_file_name;
    let id = fixture_identity(vfs, &config.root, &config.key_dir)?;
    kek.bind_store(id)?;
    let mut ks = KeyStore::open(vfs.clone(), &config.key_dir, kek, t0_us, true)?;
    let first = ks.last_segment().map_or(1, |s| s.0 + 1);
    synthetic_catalog_from(vfs, &config.root, cameras, segments_per_camera, t0_us, segment_us, first)?;
    let total = cameras as u64 * segments_per_camera;
    let mut batch = Vec::with_capacity(65_536);
    for i in 0..total {
        batch.push((SegmentId(first + i), DataKey::generate()?));
        if batch.len() == 65_536 {
            ks.put_many(&batch)?;
            batch.clear();
        }
    }
    ks.put_many(&batch)?;
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| crate::Error::io("write fixture", p, e)
    };
    for c in 0..cameras {
        let camera = format!("cam-{c:05}");
        let dir = config.root.join("segments").join(&camera);
        vfs.create_dir_all(&dir).map_err(io(&dir))?;
        for s in 0..segments_per_camera {
            let id = SegmentId(first + c as u64 * segments_per_camera + s);
            let path = dir.join(segment_file_name(id));
            let f = vfs.create_new(&path).map_err(io(&path))?;
            let h = SegmentHeader { segment: id, created_us: t0_us, camera: camera.clone() };
            f.write_at(&h.encode(), 0).map_err(io(&path))?;
        }
    }
    Ok(())
}
