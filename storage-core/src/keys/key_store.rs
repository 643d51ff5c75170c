//! The key store: wrapped data keys, one fixed-size record per segment, sorted by segment id,
//! in a file of its own directory (never beside the segments). Layout in DESIGN.md "Key store".

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::{read_exact_at, Vfs, VfsFile};
use crate::keys::{wrap_aad, DataKey, KekId, KekProvider, WRAPPED_KEY_BYTES_MAX};
use crate::segment::format::{le_u32, le_u64};
use crate::{Error, Result, SegmentId};

const MAGIC: &[u8; 8] = b"CAMVKEYS";
const VERSION: u16 = 1;
pub(crate) const HEADER_LEN: usize = 64;
pub(crate) const RECORD_LEN: usize = 96;

// Header fields, each offset built from the previous (DESIGN.md "Key store").
const H_VERSION: usize = 8;
const H_HEADER_LEN: usize = H_VERSION + 2;
const H_RECORD_LEN: usize = H_HEADER_LEN + 2;
const H_GENERATION: usize = H_RECORD_LEN + 4;
const H_KEK_ID: usize = H_GENERATION + 8;
const H_CREATED: usize = H_KEK_ID + 8;
const H_CRC: usize = HEADER_LEN - 4;
const _: () = assert!(H_CREATED + 8 <= H_CRC);

// Record fields.
const R_CRC: usize = 0;
const R_WRAPPED_LEN: usize = R_CRC + 4;
const R_SEGMENT: usize = R_WRAPPED_LEN + 4;
const R_WRAPPED: usize = R_SEGMENT + 8;
const _: () = assert!(R_WRAPPED + WRAPPED_KEY_BYTES_MAX == RECORD_LEN);

const FILE_PREFIX: &str = "keystore-";
const FILE_SUFFIX: &str = ".cvk";

/// Wrapped data keys of live segments, under one KEK generation.
pub struct KeyStore {
    dir: PathBuf,
    path: PathBuf,
    file: Arc<dyn VfsFile>,
    kek: KekId,
    provider: Arc<dyn KekProvider>,
    records: u64,
    last_segment: Option<SegmentId>,
    poisoned: Option<String>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").field("path", &self.path).field("kek", &self.kek).field("records", &self.records).finish()
    }
}

fn file_name(generation: u64) -> String {
    format!("{FILE_PREFIX}{generation:016x}{FILE_SUFFIX}")
}

fn parse_generation(name: &str) -> Option<u64> {
    u64::from_str_radix(name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?, 16).ok()
}

fn encode_header(generation: u64, kek: KekId, created_us: i64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[H_VERSION..H_VERSION + 2].copy_from_slice(&VERSION.to_le_bytes());
    h[H_HEADER_LEN..H_HEADER_LEN + 2].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    h[H_RECORD_LEN..H_RECORD_LEN + 2].copy_from_slice(&(RECORD_LEN as u16).to_le_bytes());
    h[H_GENERATION..H_GENERATION + 8].copy_from_slice(&generation.to_le_bytes());
    h[H_KEK_ID..H_KEK_ID + 8].copy_from_slice(&kek.0.to_le_bytes());
    h[H_CREATED..H_CREATED + 8].copy_from_slice(&created_us.to_le_bytes());
    let crc = crc32fast::hash(&h[..H_CRC]);
    h[H_CRC..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Encodes one record; `wrapped` must fit [`WRAPPED_KEY_BYTES_MAX`].
pub(crate) fn encode_record(segment: SegmentId, wrapped: &[u8]) -> Result<[u8; RECORD_LEN]> {
    if wrapped.len() > WRAPPED_KEY_BYTES_MAX {
        return Err(Error::LimitExceeded { what: "wrapped key bytes", actual: wrapped.len() as u64, max: WRAPPED_KEY_BYTES_MAX as u64 });
    }
    let mut r = [0u8; RECORD_LEN];
    r[R_WRAPPED_LEN..R_WRAPPED_LEN + 4].copy_from_slice(&(wrapped.len() as u32).to_le_bytes());
    r[R_SEGMENT..R_SEGMENT + 8].copy_from_slice(&segment.0.to_le_bytes());
    r[R_WRAPPED..R_WRAPPED + wrapped.len()].copy_from_slice(wrapped);
    let crc = crc32fast::hash(&r[R_WRAPPED_LEN..]);
    r[R_CRC..R_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(r)
}

/// Decodes one record: `None` when its CRC or length fails.
pub(crate) fn decode_record(r: &[u8]) -> Option<(SegmentId, &[u8])> {
    if r.len() != RECORD_LEN || crc32fast::hash(&r[R_WRAPPED_LEN..]) != le_u32(r, R_CRC) {
        return None;
    }
    let len = le_u32(r, R_WRAPPED_LEN) as usize;
    if len > WRAPPED_KEY_BYTES_MAX {
        return None;
    }
    Some((SegmentId(le_u64(r, R_SEGMENT)), &r[R_WRAPPED..R_WRAPPED + len]))
}

impl KeyStore {
    /// Opens the newest key store generation in `dir`, or creates generation 1 under a new KEK.
    /// A torn last record (a crash during the append that never completed its fsync, so no
    /// segment uses it) is cut off.
    pub fn open(vfs: Arc<dyn Vfs>, dir: &Path, provider: Arc<dyn KekProvider>, now_us: i64) -> Result<Self> {
        vfs.create_dir_all(dir).map_err(|e| Error::io("create key store directory", dir, e))?;
        let names = vfs.list_dir(dir).map_err(|e| Error::io("list key store", dir, e))?;
        let newest = names.iter().filter_map(|n| parse_generation(n)).max();
        let Some(generation) = newest else {
            let kek = provider.create_kek()?;
            let path = dir.join(file_name(1));
            let header = encode_header(1, kek, now_us);
            // create, write header, fsync file, fsync dir: the store exists before any key goes in.
            let file = (|| {
                let f = vfs.create_new(&path)?;
                f.write_at(&header, 0)?;
                f.sync_data()?;
                vfs.sync_dir(dir)?;
                Ok(f)
            })()
            .map_err(|e| Error::io("create key store", &path, e))?;
            return Ok(KeyStore { dir: dir.to_path_buf(), path, file, kek, provider, records: 0, last_segment: None, poisoned: None });
        };
        let path = dir.join(file_name(generation));
        let file = vfs.open(&path).map_err(|e| Error::io("open key store", &path, e))?;
        let mut h = [0u8; HEADER_LEN];
        read_exact_at(file.as_ref(), &mut h, 0).map_err(|e| Error::io("read key store header", &path, e))?;
        if &h[..8] != MAGIC || crc32fast::hash(&h[..H_CRC]) != le_u32(&h, H_CRC) {
            return Err(Error::Corrupt { path, offset: Some(0), detail: "key store header fails its check".into() });
        }
        let kek = KekId(le_u64(&h, H_KEK_ID));
        let len = file.len().map_err(|e| Error::io("stat key store", &path, e))?;
        let mut records = (len.saturating_sub(HEADER_LEN as u64)) / RECORD_LEN as u64;
        let mut last_segment = None;
        let mut rec = [0u8; RECORD_LEN];
        // Only the last record can be torn: each append is fsynced before the next begins, and a
        // record whose fsync never completed was never used by a segment. A bad record before it
        // is rot, reported and never cut.
        for attempt in 0..2 {
            if records == 0 {
                break;
            }
            let off = HEADER_LEN as u64 + (records - 1) * RECORD_LEN as u64;
            read_exact_at(file.as_ref(), &mut rec, off).map_err(|e| Error::io("read key store", &path, e))?;
            if let Some((seg, _)) = decode_record(&rec) {
                last_segment = Some(seg);
                break;
            }
            if attempt == 1 {
                return Err(Error::Corrupt { path, offset: Some(off), detail: "key store record fails its CRC".into() });
            }
            tracing::warn!(path = %path.display(), record = records - 1, "cutting torn key store record");
            records -= 1;
        }
        let store_len = HEADER_LEN as u64 + records * RECORD_LEN as u64;
        if store_len != len {
            file.set_len(store_len).and_then(|_| file.sync_data()).map_err(|e| Error::io("truncate key store", &path, e))?;
        }
        Ok(KeyStore { dir: dir.to_path_buf(), path, file, kek, provider, records, last_segment, poisoned: None })
    }

    /// The highest segment id with a key, if any.
    pub fn last_segment(&self) -> Option<SegmentId> {
        self.last_segment
    }

    /// Number of wrapped keys held.
    pub fn len(&self) -> u64 {
        self.records
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The KEK this generation is wrapped under.
    pub fn kek(&self) -> KekId {
        self.kek
    }

    /// Wraps and durably stores `key` for `segment` (ids must ascend). Returns once fsynced.
    pub fn put(&mut self, segment: SegmentId, key: &DataKey) -> Result<()> {
        if let Some(p) = &self.poisoned {
            return Err(Error::Poisoned(p.clone()));
        }
        if self.last_segment.is_some_and(|l| l >= segment) {
            return Err(Error::InvalidArgument(format!("segment id {} does not ascend", segment.0)));
        }
        let wrapped = self.provider.wrap(self.kek, key, &wrap_aad(segment))?;
        let rec = encode_record(segment, &wrapped)?;
        let off = HEADER_LEN as u64 + self.records * RECORD_LEN as u64;
        self.file.write_at(&rec, off).map_err(|e| Error::io("append key store", &self.path, e))?;
        if let Err(e) = self.file.sync_data() {
            // fsyncgate: a failed fsync may have dropped the page; never retry and trust it.
            self.poisoned = Some(format!("fsync of {} failed: {e}", self.path.display()));
            return Err(Error::io("fsync key store", &self.path, e));
        }
        self.records += 1;
        self.last_segment = Some(segment);
        Ok(())
    }

    /// Looks up and unwraps the data key of `segment`.
    pub fn get(&self, segment: SegmentId) -> Result<DataKey> {
        let (mut lo, mut hi) = (0u64, self.records);
        let mut rec = [0u8; RECORD_LEN];
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let off = HEADER_LEN as u64 + mid * RECORD_LEN as u64;
            read_exact_at(self.file.as_ref(), &mut rec, off).map_err(|e| Error::io("read key store", &self.path, e))?;
            let Some((seg, wrapped)) = decode_record(&rec) else {
                return Err(Error::Corrupt { path: self.path.clone(), offset: Some(off), detail: "key store record fails its CRC".into() });
            };
            match seg.cmp(&segment) {
                std::cmp::Ordering::Equal => return self.provider.unwrap(self.kek, wrapped, &wrap_aad(segment)),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Err(Error::NotFound(format!("no data key for segment {}", segment.0)))
    }

    /// The directory holding the key store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{CrashMode, MemVfs};
    use crate::keys::FileKekProvider;

    fn open(vfs: &MemVfs) -> KeyStore {
        let v: Arc<dyn Vfs> = Arc::new(vfs.clone());
        let kek = Arc::new(FileKekProvider::open(v.clone(), "/kek").expect("kek"));
        KeyStore::open(v, Path::new("/keys"), kek, 0).expect("open")
    }

    #[test]
    fn keys_round_trip_and_a_torn_last_record_is_cut() {
        let vfs = MemVfs::new();
        let mut ks = open(&vfs);
        let keys: Vec<DataKey> = (0..5).map(|_| DataKey::generate().expect("key")).collect();
        for (i, k) in keys.iter().enumerate() {
            ks.put(SegmentId(10 + i as u64 * 3), k).expect("put");
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(ks.get(SegmentId(10 + i as u64 * 3)).expect("get").expose(), k.expose());
        }
        assert!(matches!(ks.get(SegmentId(11)), Err(Error::NotFound(_))));
        assert!(ks.put(SegmentId(5), &keys[0]).is_err(), "ids must ascend");
        // Tear an unsynced append: the store reopens without it.
        let path = Path::new("/keys").join(file_name(1));
        let f = vfs.open(&path).expect("file");
        let len = f.len().expect("len");
        f.write_at(&[0xAB; RECORD_LEN], len).expect("write");
        let crashed = vfs.crash(CrashMode::TearLastWrite);
        let ks = open(&crashed);
        assert_eq!(ks.len(), 5);
        assert_eq!(ks.last_segment(), Some(SegmentId(22)));
        assert_eq!(ks.get(SegmentId(22)).expect("get").expose(), keys[4].expose());
    }

    #[test]
    fn a_wrapped_key_does_not_unwrap_for_another_segment() {
        let vfs = MemVfs::new();
        let mut ks = open(&vfs);
        ks.put(SegmentId(1), &DataKey::generate().expect("key")).expect("put");
        ks.put(SegmentId(2), &DataKey::generate().expect("key")).expect("put");
        // Copy record 1's wrapped key into record 2's slot (with a valid CRC).
        let path = Path::new("/keys").join(file_name(1));
        let f = vfs.open(&path).expect("file");
        let mut r1 = [0u8; RECORD_LEN];
        read_exact_at(f.as_ref(), &mut r1, HEADER_LEN as u64).expect("read");
        let (_, wrapped) = decode_record(&r1).expect("record");
        let forged = encode_record(SegmentId(2), wrapped).expect("encode");
        f.write_at(&forged, (HEADER_LEN + RECORD_LEN) as u64).expect("write");
        assert!(matches!(ks.get(SegmentId(2)), Err(Error::Key(_))));
    }
}
