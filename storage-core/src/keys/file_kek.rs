//! A KEK provider that keeps each KEK in a file. For development and single-host set-ups only:
//! see SECURITY.md "Key hierarchy and threat model" for what it does not protect against.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::io::{read_exact_at, write_file_atomic, Vfs};
use crate::keys::{random_bytes, DataKey, KekId, KekProvider, SegmentCipher};
use crate::{Error, Result, StoreId};

const KEK_FILE_PREFIX: &str = "kek-";
const KEK_FILE_SUFFIX: &str = ".key";
/// A KEK file: magic (8) + key (32) + crc32 (4).
const KEK_FILE_BYTES: usize = 44;
const KEK_MAGIC: &[u8; 8] = b"CAMVKEK1";

/// KEKs as files `kek-<id as 16 hex digits>.key` in one directory, read through the [`Vfs`].
pub struct FileKekProvider {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    lock: Mutex<()>,
}

impl FileKekProvider {
    /// Opens (creating if needed) the provider's directory.
    pub fn open(vfs: Arc<dyn Vfs>, dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        vfs.create_dir_all(&dir).map_err(|e| Error::io("create KEK directory", &dir, e))?;
        Ok(FileKekProvider { vfs, dir, lock: Mutex::new(()) })
    }

    fn path(&self, id: KekId) -> PathBuf {
        self.dir.join(format!("{KEK_FILE_PREFIX}{:016x}{KEK_FILE_SUFFIX}", id.0))
    }

    fn load(&self, id: KekId) -> Result<SegmentCipher> {
        let path = self.path(id);
        let file = self.vfs.open(&path).map_err(|_| Error::Key(format!("KEK {} is not held (destroyed or never created)", id.0)))?;
        let mut buf = [0u8; KEK_FILE_BYTES];
        read_exact_at(file.as_ref(), &mut buf, 0).map_err(|e| Error::io("read KEK", &path, e))?;
        let crc = u32::from_le_bytes([buf[40], buf[41], buf[42], buf[43]]);
        if &buf[..8] != KEK_MAGIC || crc32fast::hash(&buf[..40]) != crc {
            return Err(Error::Corrupt { path, offset: Some(0), detail: "KEK file fails its check".into() });
        }
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&buf[8..40]);
        let key = DataKey::from_bytes(raw);
        zeroize::Zeroize::zeroize(&mut raw);
        zeroize::Zeroize::zeroize(&mut buf);
        Ok(SegmentCipher::new(&key))
    }
}

fn parse_name(name: &str) -> Option<KekId> {
    let hex = name.strip_prefix(KEK_FILE_PREFIX)?.strip_suffix(KEK_FILE_SUFFIX)?;
    u64::from_str_radix(hex, 16).ok().map(KekId)
}

impl KekProvider for FileKekProvider {
    fn bind_store(&self, store: StoreId) -> Result<()> {
        // Refuses the directory of another store before any KEK in it is listed, used or
        // destroyed; then refuses KEK files other users could read.
        crate::identity::bind_kek_dir(&self.vfs, &self.dir, store, 0)?;
        crate::identity::check_private_dir(&self.vfs, &self.dir)
    }

    fn create_kek(&self) -> Result<KekId> {
        let _g = self.lock.lock().map_err(|_| Error::Key("KEK provider lock poisoned".into()))?;
        let next = self.list_keks()?.last().map_or(1, |k| k.0 + 1);
        let id = KekId(next);
        let path = self.path(id);
        let mut buf = [0u8; KEK_FILE_BYTES];
        buf[..8].copy_from_slice(KEK_MAGIC);
        random_bytes(&mut buf[8..40])?;
        let crc = crc32fast::hash(&buf[..40]);
        buf[40..].copy_from_slice(&crc.to_le_bytes());
        // Durable (and whole) before anything is wrapped by it.
        let res = write_file_atomic(self.vfs.as_ref(), &self.dir, &path, &buf);
        zeroize::Zeroize::zeroize(&mut buf);
        res.map_err(|e| Error::io("create KEK", &path, e))?;
        Ok(id)
    }

    fn wrap(&self, kek: KekId, key: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        let cipher = self.load(kek)?;
        let mut out = vec![0u8; 12 + 32 + 16];
        random_bytes(&mut out[..12])?;
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&out[..12]);
        out[12..44].copy_from_slice(key.expose());
        let tag = cipher.seal(&nonce, aad, &mut out[12..44])?;
        out[44..].copy_from_slice(&tag);
        Ok(out)
    }

    fn unwrap(&self, kek: KekId, wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
        if wrapped.len() != 60 {
            return Err(Error::Key(format!("wrapped key has {} bytes, expected 60", wrapped.len())));
        }
        let cipher = self.load(kek)?;
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&wrapped[..12]);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&wrapped[44..]);
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&wrapped[12..44]);
        if !cipher.open(&nonce, aad, &mut raw, &tag) {
            return Err(Error::Key(format!("data key does not unwrap under KEK {}", kek.0)));
        }
        let key = DataKey::from_bytes(raw);
        zeroize::Zeroize::zeroize(&mut raw);
        Ok(key)
    }

    fn destroy_kek(&self, kek: KekId) -> Result<()> {
        let path = self.path(kek);
        // Overwrite, fsync, unlink, fsync dir. On a journalling or copy-on-write file system or
        // an SSD the old blocks may survive; SECURITY.md "Crypto-erase" says so.
        (|| {
            let f = self.vfs.open(&path)?;
            f.write_at(&[0u8; KEK_FILE_BYTES], 0)?;
            f.sync_data()?;
            self.vfs.remove_file(&path)?;
            self.vfs.sync_dir(&self.dir)
        })()
        .map_err(|e| Error::io("destroy KEK", &path, e))
    }

    fn list_keks(&self) -> Result<Vec<KekId>> {
        let names = self.vfs.list_dir(&self.dir).map_err(|e| Error::io("list KEKs", &self.dir, e))?;
        let mut ids: Vec<KekId> = names.iter().filter_map(|n| parse_name(n)).collect();
        ids.sort();
        Ok(ids)
    }
}
