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
    let loaded = Catalog::open(vfs, &root.join("catalog"))?;
    let mut cat = loaded.catalog;
    let mut next = loaded.max_segment.map_or(1, |s| s.0 + 1);
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
