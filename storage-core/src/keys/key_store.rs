//! The key store: a generation file of data keys, each wrapped under the generation key (GK),
//! the GK itself wrapped by a KEK the [`KekProvider`] holds. One fixed-size record per segment,
//! sorted by segment id, in a directory apart from the segments. Layout in FORMAT.md "Key store".
//!
//! Crypto-erase rotates the generation: a new KEK and GK, the surviving keys rewrapped into a
//! new file, the old KEK destroyed in the provider. Every copy of an older generation file (on
//! the disk, in a backup, in an SSD's remapped blocks) then holds keys under a GK that only the
//! destroyed KEK could unwrap.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::{read_exact_at, read_up_to, Vfs, VfsFile};
use crate::keys::{wrap_aad, DataKey, KekId, KekProvider, SegmentCipher, WRAPPED_KEY_BYTES_MAX};
use crate::segment::format::{le_u32, le_u64};
use crate::{Error, Result, SegmentId};

const MAGIC: &[u8; 8] = b"CAMVKEYS";
const VERSION: u16 = 1;
pub(crate) const HEADER_LEN: usize = 160;
pub(crate) const RECORD_LEN: usize = 96;

// Header fields, each offset built from the previous (FORMAT.md "Key store").
const H_VERSION: usize = 8;
const H_HEADER_LEN: usize = H_VERSION + 2;
const H_RECORD_LEN: usize = H_HEADER_LEN + 2;
const H_GENERATION: usize = H_RECORD_LEN + 4;
const H_KEK_ID: usize = H_GENERATION + 8;
const H_CREATED: usize = H_KEK_ID + 8;
const H_WRAPPED_GK_LEN: usize = H_CREATED + 8;
const H_WRAPPED_GK: usize = H_WRAPPED_GK_LEN + 8;
const H_CRC: usize = HEADER_LEN - 4;
const _: () = assert!(H_WRAPPED_GK + WRAPPED_KEY_BYTES_MAX <= H_CRC);

// Record fields.
const R_CRC: usize = 0;
const R_WRAPPED_LEN: usize = R_CRC + 4;
const R_SEGMENT: usize = R_WRAPPED_LEN + 4;
const R_WRAPPED: usize = R_SEGMENT + 8;
const _: () = assert!(R_WRAPPED + WRAPPED_KEY_BYTES_MAX == RECORD_LEN);
/// A data key wrapped under the GK: 32 bytes of ciphertext and a 16-byte tag (the nonce is the
/// segment id, unique within a generation).
const DK_WRAPPED_LEN: usize = 48;

const FILE_PREFIX: &str = "keystore-";
const FILE_SUFFIX: &str = ".cvk";
/// Records rewrapped per write during rotation (96 B each: 6 MiB per write).
const ROTATE_BATCH_RECORDS: usize = 65_536;

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Generation before and after.
    pub generations: (u64, u64),
    /// KEK destroyed (the old generation's).
    pub destroyed_kek: KekId,
    /// KEK now in use.
    pub new_kek: KekId,
    /// Data keys carried over.
    pub kept: u64,
    /// Data keys left behind (now unrecoverable).
    pub removed: Vec<SegmentId>,
}

/// Wrapped data keys of live segments, under one generation.
pub struct KeyStore {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    path: PathBuf,
    file: Arc<dyn VfsFile>,
    generation: u64,
    kek: KekId,
    gk: SegmentCipher,
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

fn gk_aad(generation: u64) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(b"camvGK01");
    a[8..].copy_from_slice(&generation.to_le_bytes());
    a
}

fn dk_nonce(segment: SegmentId) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&segment.0.to_le_bytes());
    n
}

struct Header {
    generation: u64,
    kek: KekId,
    wrapped_gk: Vec<u8>,
}

fn encode_header(generation: u64, kek: KekId, created_us: i64, wrapped_gk: &[u8]) -> Result<[u8; HEADER_LEN]> {
    if wrapped_gk.len() > WRAPPED_KEY_BYTES_MAX {
        return Err(Error::LimitExceeded { what: "wrapped key bytes", actual: wrapped_gk.len() as u64, max: WRAPPED_KEY_BYTES_MAX as u64 });
    }
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[H_VERSION..H_VERSION + 2].copy_from_slice(&VERSION.to_le_bytes());
    h[H_HEADER_LEN..H_HEADER_LEN + 2].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    h[H_RECORD_LEN..H_RECORD_LEN + 2].copy_from_slice(&(RECORD_LEN as u16).to_le_bytes());
    h[H_GENERATION..H_GENERATION + 8].copy_from_slice(&generation.to_le_bytes());
    h[H_KEK_ID..H_KEK_ID + 8].copy_from_slice(&kek.0.to_le_bytes());
    h[H_CREATED..H_CREATED + 8].copy_from_slice(&created_us.to_le_bytes());
    h[H_WRAPPED_GK_LEN..H_WRAPPED_GK_LEN + 4].copy_from_slice(&(wrapped_gk.len() as u32).to_le_bytes());
    h[H_WRAPPED_GK..H_WRAPPED_GK + wrapped_gk.len()].copy_from_slice(wrapped_gk);
    let crc = crc32fast::hash(&h[..H_CRC]);
    h[H_CRC..].copy_from_slice(&crc.to_le_bytes());
    Ok(h)
}

fn decode_header(h: &[u8]) -> Option<Header> {
    if h.len() < HEADER_LEN || &h[..8] != MAGIC || crc32fast::hash(&h[..H_CRC]) != le_u32(h, H_CRC) {
        return None;
    }
    let len = le_u32(h, H_WRAPPED_GK_LEN) as usize;
    if len > WRAPPED_KEY_BYTES_MAX || u16::from_le_bytes([h[H_RECORD_LEN], h[H_RECORD_LEN + 1]]) as usize != RECORD_LEN {
        return None;
    }
    Some(Header {
        generation: le_u64(h, H_GENERATION),
        kek: KekId(le_u64(h, H_KEK_ID)),
        wrapped_gk: h[H_WRAPPED_GK..H_WRAPPED_GK + len].to_vec(),
    })
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

/// Public decoders for tools that inspect key store bytes (the disk-image adversary test).
pub mod inspect {
    use super::*;

    /// A key store header's generation, KEK id and KEK-wrapped GK, if `bytes` starts with one.
    pub fn header(bytes: &[u8]) -> Option<(u64, KekId, Vec<u8>)> {
        decode_header(bytes).map(|h| (h.generation, h.kek, h.wrapped_gk))
    }

    /// A key store record's segment id and GK-wrapped data key.
    pub fn record(bytes: &[u8]) -> Option<(SegmentId, Vec<u8>)> {
        decode_record(bytes).map(|(s, w)| (s, w.to_vec()))
    }

    /// Unwraps a GK-wrapped data key with a candidate GK; `None` if it does not authenticate.
    pub fn unwrap_data_key(gk: &DataKey, segment: SegmentId, wrapped: &[u8]) -> Option<DataKey> {
        super::unwrap_dk(&SegmentCipher::new(gk), segment, wrapped).ok()
    }

    /// The associated data a KEK-wrapped GK of `generation` is bound to.
    pub fn gk_aad(generation: u64) -> [u8; 16] {
        super::gk_aad(generation)
    }
}

fn wrap_dk(gk: &SegmentCipher, segment: SegmentId, key: &DataKey) -> Result<Vec<u8>> {
    let mut out = vec![0u8; DK_WRAPPED_LEN];
    out[..32].copy_from_slice(key.expose());
    let tag = gk.seal(&dk_nonce(segment), &wrap_aad(segment), &mut out[..32])?;
    out[32..].copy_from_slice(&tag);
    Ok(out)
}

fn unwrap_dk(gk: &SegmentCipher, segment: SegmentId, wrapped: &[u8]) -> Result<DataKey> {
    if wrapped.len() != DK_WRAPPED_LEN {
        return Err(Error::Key(format!("wrapped data key of segment {} has {} bytes", segment.0, wrapped.len())));
    }
    let mut raw = [0u8; 32];
    raw.copy_from_slice(&wrapped[..32]);
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&wrapped[32..]);
    if !gk.open(&dk_nonce(segment), &wrap_aad(segment), &mut raw, &tag) {
        zeroize::Zeroize::zeroize(&mut raw);
        return Err(Error::Key(format!("data key of segment {} does not unwrap", segment.0)));
    }
    let k = DataKey::from_bytes(raw);
    zeroize::Zeroize::zeroize(&mut raw);
    Ok(k)
}

fn read_header(file: &dyn VfsFile, path: &Path) -> Result<Header> {
    let mut h = [0u8; HEADER_LEN];
    read_exact_at(file, &mut h, 0).map_err(|e| Error::io("read key store header", path, e))?;
    decode_header(&h).ok_or_else(|| Error::Corrupt {
        path: path.to_path_buf(),
        offset: Some(0),
        detail: "key store header fails its check".into(),
    })
}

/// A freshly written generation: path, file, KEK, GK, record count, last segment.
type Written = (PathBuf, Arc<dyn VfsFile>, KekId, SegmentCipher, u64, Option<SegmentId>);

/// Writes a new generation file (temporary name, fsync, rename, fsync dir) holding `records`.
fn write_generation(
    vfs: &Arc<dyn Vfs>,
    dir: &Path,
    provider: &Arc<dyn KekProvider>,
    generation: u64,
    now_us: i64,
    mut fill: impl FnMut(&SegmentCipher, &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>,
) -> Result<Written> {
    let kek = provider.create_kek()?;
    let gk = DataKey::generate()?;
    let wrapped_gk = provider.wrap(kek, &gk, &gk_aad(generation))?;
    let cipher = SegmentCipher::new(&gk);
    drop(gk);
    let header = encode_header(generation, kek, now_us, &wrapped_gk)?;
    let path = dir.join(file_name(generation));
    let tmp = dir.join(format!("{}.tmp", file_name(generation)));
    let io = |e| Error::io("write key store generation", &tmp, e);
    if vfs.exists(&tmp) {
        vfs.remove_file(&tmp).map_err(io)?;
    }
    let f = vfs.create_new(&tmp).map_err(io)?;
    f.write_at(&header, 0).map_err(io)?;
    let mut off = HEADER_LEN as u64;
    let mut records = 0u64;
    let mut last = None;
    let mut batch: Vec<u8> = Vec::with_capacity(ROTATE_BATCH_RECORDS * RECORD_LEN);
    {
        let mut sink = |rec: &[u8]| -> Result<()> {
            debug_assert_eq!(rec.len(), RECORD_LEN);
            batch.extend_from_slice(rec);
            records += 1;
            last = decode_record(rec).map(|(s, _)| s);
            if batch.len() >= ROTATE_BATCH_RECORDS * RECORD_LEN {
                f.write_at(&batch, off).map_err(|e| Error::io("write key store generation", &tmp, e))?;
                off += batch.len() as u64;
                batch.clear();
            }
            Ok(())
        };
        fill(&cipher, &mut sink)?;
    }
    f.write_at(&batch, off).map_err(io)?;
    f.sync_data().map_err(io)?;
    vfs.rename(&tmp, &path).map_err(io)?;
    vfs.sync_dir(dir).map_err(io)?;
    let file = vfs.open(&path).map_err(|e| Error::io("open key store", &path, e))?;
    Ok((path, file, kek, cipher, records, last))
}

impl KeyStore {
    /// Opens the newest key store generation in `dir`, or, when `may_create` (a store that has
    /// never created a segment), creates generation 1 under a new KEK. Finishes a rotation a
    /// crash interrupted (destroys the older generations' KEKs and files, and any KEK of this
    /// store's provider that no generation uses), and cuts a torn last record. `provider` must
    /// be bound to the store ([`KekProvider::bind_store`]): only this store's KEKs are ever
    /// destroyed.
    pub fn open(vfs: Arc<dyn Vfs>, dir: &Path, provider: Arc<dyn KekProvider>, now_us: i64, may_create: bool) -> Result<Self> {
        vfs.create_dir_all(dir).map_err(|e| Error::io("create key store directory", dir, e))?;
        let names = vfs.list_dir(dir).map_err(|e| Error::io("list key store", dir, e))?;
        for n in names.iter().filter(|n| n.ends_with(".tmp")) {
            // A generation whose rename never happened: its GK's KEK is destroyed below.
            let p = dir.join(n);
            vfs.remove_file(&p).map_err(|e| Error::io("remove unfinished key store generation", &p, e))?;
        }
        let mut gens: Vec<u64> = names.iter().filter_map(|n| parse_generation(n)).collect();
        gens.sort_unstable();
        let Some(&newest) = gens.last() else {
            if !may_create {
                // Creating generation 1 here would hide the loss (and destroy the KEKs that
                // could unwrap a backup of the key store).
                return Err(Error::Identity(format!(
                    "the key directory {} holds no key store generation, but this store has written segments: \
                     restore the key directory from its backup; nothing was created or destroyed",
                    dir.display()
                )));
            }
            let (path, file, kek, gk, _, _) = write_generation(&vfs, dir, &provider, 1, now_us, |_, _| Ok(()))?;
            let ks = KeyStore {
                vfs,
                dir: dir.to_path_buf(),
                path,
                file,
                generation: 1,
                kek,
                gk,
                provider,
                records: 0,
                last_segment: None,
                poisoned: None,
            };
            ks.destroy_unused_keks()?;
            return Ok(ks);
        };
        let path = dir.join(file_name(newest));
        let file = vfs.open(&path).map_err(|e| Error::io("open key store", &path, e))?;
        let header = read_header(file.as_ref(), &path)?;
        let gk = provider.unwrap(header.kek, &header.wrapped_gk, &gk_aad(header.generation))?;
        let gk = SegmentCipher::new(&gk);
        let len = file.len().map_err(|e| Error::io("stat key store", &path, e))?;
        let mut records = len.saturating_sub(HEADER_LEN as u64) / RECORD_LEN as u64;
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
        let ks = KeyStore {
            vfs,
            dir: dir.to_path_buf(),
            path,
            file,
            generation: header.generation,
            kek: header.kek,
            gk,
            provider,
            records,
            last_segment,
            poisoned: None,
        };
        for &g in &gens[..gens.len() - 1] {
            ks.retire_generation(g)?;
        }
        ks.destroy_unused_keks()?;
        Ok(ks)
    }

    /// Destroys an older generation's KEK (if still held) and removes its file.
    fn retire_generation(&self, generation: u64) -> Result<()> {
        let path = self.dir.join(file_name(generation));
        if let Ok(f) = self.vfs.open(&path) {
            if let Ok(h) = read_header(f.as_ref(), &path) {
                if h.kek != self.kek && self.provider.list_keks()?.contains(&h.kek) {
                    self.provider.destroy_kek(h.kek)?;
                }
            }
        }
        (|| {
            self.vfs.remove_file(&path)?;
            self.vfs.sync_dir(&self.dir)
        })()
        .map_err(|e| Error::io("remove old key store generation", &path, e))
    }

    /// Destroys every KEK in the provider except the current one: a KEK no generation uses
    /// wraps nothing anyone should be able to read.
    fn destroy_unused_keks(&self) -> Result<()> {
        for k in self.provider.list_keks()? {
            if k != self.kek {
                tracing::info!(kek = k.0, "destroying a KEK no key store generation uses");
                self.provider.destroy_kek(k)?;
            }
        }
        Ok(())
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

    /// The KEK this generation's GK is wrapped under.
    pub fn kek(&self) -> KekId {
        self.kek
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Wraps and durably stores `key` for `segment` (ids must ascend). Returns once fsynced.
    pub fn put(&mut self, segment: SegmentId, key: &DataKey) -> Result<()> {
        if let Some(p) = &self.poisoned {
            return Err(Error::Poisoned(p.clone()));
        }
        if self.last_segment.is_some_and(|l| l >= segment) {
            return Err(Error::InvalidArgument(format!("segment id {} does not ascend", segment.0)));
        }
        let rec = encode_record(segment, &wrap_dk(&self.gk, segment, key)?)?;
        let off = HEADER_LEN as u64 + self.records * RECORD_LEN as u64;
        self.file.write_at(&rec, off).map_err(|e| Error::io("append key store", &self.path, e))?;
        if let Err(e) = self.file.sync_data() {
            // fsyncgate: a failed fsync may have dropped the page; never retry and trust it.
            self.poisoned = Some(format!("fsync of {} failed: {e}", self.path.display()));
            return Err(Error::fsync("fsync key store", &self.path, e));
        }
        self.records += 1;
        self.last_segment = Some(segment);
        Ok(())
    }

    /// Stores many keys with one write and one fsync (bulk loads and fixtures); ids must ascend.
    pub fn put_many(&mut self, keys: &[(SegmentId, DataKey)]) -> Result<()> {
        if let Some(p) = &self.poisoned {
            return Err(Error::Poisoned(p.clone()));
        }
        let mut bytes = Vec::with_capacity(keys.len() * RECORD_LEN);
        let mut last = self.last_segment;
        for (segment, key) in keys {
            if last.is_some_and(|l| l >= *segment) {
                return Err(Error::InvalidArgument(format!("segment id {} does not ascend", segment.0)));
            }
            bytes.extend_from_slice(&encode_record(*segment, &wrap_dk(&self.gk, *segment, key)?)?);
            last = Some(*segment);
        }
        let off = HEADER_LEN as u64 + self.records * RECORD_LEN as u64;
        self.file.write_at(&bytes, off).map_err(|e| Error::io("append key store", &self.path, e))?;
        if let Err(e) = self.file.sync_data() {
            self.poisoned = Some(format!("fsync of {} failed: {e}", self.path.display()));
            return Err(Error::fsync("fsync key store", &self.path, e));
        }
        self.records += keys.len() as u64;
        self.last_segment = last;
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
                std::cmp::Ordering::Equal => return unwrap_dk(&self.gk, segment, wrapped),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Err(Error::NotFound(format!("no data key for segment {} (erased, or never written)", segment.0)))
    }

    /// Crypto-erase step: a new generation under a new KEK and GK holding every key except
    /// `remove`, then the old KEK destroyed and the old file removed (DURABILITY.md "Lifecycle and
    /// fsync order"). Cost: one sequential read and write of the key store and two AES-GCM operations
    /// on 32 bytes per kept key.
    pub fn rotate(&mut self, remove: &BTreeSet<SegmentId>, now_us: i64) -> Result<Rotation> {
        if let Some(p) = &self.poisoned {
            return Err(Error::Poisoned(p.clone()));
        }
        let old_gen = self.generation;
        let old_kek = self.kek;
        let old_path = self.path.clone();
        let new_gen = old_gen + 1;
        let mut removed = Vec::new();
        let (src, old_gk, records) = (self.file.clone(), &self.gk, self.records);
        let written = write_generation(&self.vfs, &self.dir, &self.provider, new_gen, now_us, |new_gk, sink| {
            let mut buf = vec![0u8; ROTATE_BATCH_RECORDS * RECORD_LEN];
            let mut done = 0u64;
            while done < records {
                let n = (records - done).min(ROTATE_BATCH_RECORDS as u64) as usize;
                let off = HEADER_LEN as u64 + done * RECORD_LEN as u64;
                let got =
                    read_up_to(src.as_ref(), &mut buf[..n * RECORD_LEN], off).map_err(|e| Error::io("read key store", &old_path, e))?;
                if got != n * RECORD_LEN {
                    return Err(Error::Corrupt {
                        path: old_path.clone(),
                        offset: Some(off),
                        detail: "key store shorter than its records".into(),
                    });
                }
                for (i, r) in buf[..got].chunks(RECORD_LEN).enumerate() {
                    let Some((seg, wrapped)) = decode_record(r) else {
                        let at = off + (i * RECORD_LEN) as u64;
                        return Err(Error::Corrupt {
                            path: old_path.clone(),
                            offset: Some(at),
                            detail: "key store record fails its CRC".into(),
                        });
                    };
                    if remove.contains(&seg) {
                        removed.push(seg);
                        continue;
                    }
                    let dk = unwrap_dk(old_gk, seg, wrapped)?;
                    sink(&encode_record(seg, &wrap_dk(new_gk, seg, &dk)?)?)?;
                }
                done += n as u64;
            }
            Ok(())
        });
        let (path, file, kek, gk, kept, last) = match written {
            Ok(w) => w,
            Err(e) => {
                // The old generation is still whole and current; the new KEK (if made) is
                // destroyed at the next open.
                return Err(e);
            }
        };
        self.path = path;
        self.file = file;
        self.kek = kek;
        self.gk = gk;
        self.generation = new_gen;
        self.records = kept;
        self.last_segment = self.last_segment.max(last);
        // Destroying the old KEK is the erase: from here on no copy of the old generation
        // unwraps. Then the old file goes.
        self.provider.destroy_kek(old_kek)?;
        self.retire_generation(old_gen)?;
        Ok(Rotation { generations: (old_gen, new_gen), destroyed_kek: old_kek, new_kek: kek, kept, removed })
    }

    /// Decommission: destroys the current KEK (and with it every data key) and removes the
    /// key store. The store is unusable afterwards.
    pub fn destroy_all(&mut self) -> Result<KekId> {
        let kek = self.kek;
        self.provider.destroy_kek(kek)?;
        self.poisoned = Some("the key store was destroyed by decommissioning".into());
        (|| {
            self.vfs.remove_file(&self.path)?;
            self.vfs.sync_dir(&self.dir)
        })()
        .map_err(|e| Error::io("remove key store", &self.path, e))?;
        Ok(kek)
    }

    /// Segment ids with a key, in order.
    pub fn segments(&self) -> Result<Vec<SegmentId>> {
        let mut out = Vec::with_capacity(self.records as usize);
        let mut buf = vec![0u8; ROTATE_BATCH_RECORDS * RECORD_LEN];
        let mut done = 0u64;
        while done < self.records {
            let n = (self.records - done).min(ROTATE_BATCH_RECORDS as u64) as usize;
            let off = HEADER_LEN as u64 + done * RECORD_LEN as u64;
            read_exact_at(self.file.as_ref(), &mut buf[..n * RECORD_LEN], off).map_err(|e| Error::io("read key store", &self.path, e))?;
            out.extend(buf[..n * RECORD_LEN].chunks(RECORD_LEN).filter_map(|r| decode_record(r).map(|(s, _)| s)));
            done += n as u64;
        }
        Ok(out)
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
        kek.bind_store(crate::StoreId([9; 16])).expect("bind");
        KeyStore::open(v, Path::new("/keys"), kek, 0, true).expect("open")
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

    #[test]
    fn rotation_keeps_the_survivors_and_destroys_the_old_kek() {
        let vfs = MemVfs::new();
        let mut ks = open(&vfs);
        let keys: Vec<DataKey> = (0..10).map(|_| DataKey::generate().expect("key")).collect();
        for (i, k) in keys.iter().enumerate() {
            ks.put(SegmentId(i as u64 + 1), k).expect("put");
        }
        let old_kek = ks.kek();
        let remove: BTreeSet<SegmentId> = [SegmentId(3), SegmentId(7)].into_iter().collect();
        let r = ks.rotate(&remove, 0).expect("rotate");
        assert_eq!(r.kept, 8);
        assert_eq!(r.removed, vec![SegmentId(3), SegmentId(7)]);
        assert_eq!(r.destroyed_kek, old_kek);
        assert!(!ks.provider.list_keks().expect("list").contains(&old_kek));
        for (i, k) in keys.iter().enumerate() {
            let seg = SegmentId(i as u64 + 1);
            match ks.get(seg) {
                Ok(got) => assert_eq!(got.expose(), k.expose()),
                Err(Error::NotFound(_)) => assert!(remove.contains(&seg)),
                Err(e) => panic!("{e}"),
            }
        }
        // Reopen: the new generation is current and appends continue after the last id.
        drop(ks);
        let mut ks = open(&vfs);
        assert_eq!(ks.generation(), 2);
        assert_eq!(ks.len(), 8);
        ks.put(SegmentId(11), &DataKey::generate().expect("key")).expect("put");
        assert_eq!(vfs.files().iter().filter(|p| p.starts_with("/keys")).count(), 1);
    }
}
