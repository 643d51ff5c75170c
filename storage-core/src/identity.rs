//! The store's identity: a random 128-bit id written at creation into the root, the key
//! directory and the file KEK provider's directory (a PKCS#11 provider carries it in its KEK
//! labels). Opening a root with another store's key directory, or with its key directory
//! missing, is refused with both paths named: nothing is created, rotated or destroyed. Format
//! and rules in FORMAT.md "Store identity `store.id`".

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::{read_up_to, write_file_atomic, Vfs};
use crate::keys::random_bytes;
use crate::segment::format::{le_u32, le_u64};
use crate::{Error, Result};

/// Name of the identity file in each directory of a store.
pub(crate) const FILE_NAME: &str = "store.id";
const MAGIC: &[u8; 8] = b"CAMVSTID";
const VERSION: u16 = 1;
/// magic (8) + version (2) + role (2) + reserved (4) + id (16) + created_us (8) + crc32 (4).
pub(crate) const FILE_BYTES: usize = 44;

/// Which directory of a store an identity file sits in (stored, so a file copied into the
/// wrong directory is not taken for that directory's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The root: segments, catalog, control and audit logs.
    Root = 1,
    /// The key directory: key store generations, signing key, audit anchor.
    KeyDir = 2,
    /// The file KEK provider's directory.
    KekDir = 3,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::KeyDir => "key directory",
            Role::KekDir => "KEK directory",
        }
    }
}

/// A store's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreId(pub [u8; 16]);

impl StoreId {
    /// A fresh random id.
    pub(crate) fn generate() -> Result<StoreId> {
        let mut b = [0u8; 16];
        random_bytes(&mut b)?;
        Ok(StoreId(b))
    }
}

impl std::fmt::Display for StoreId {
    /// UUID layout (8-4-4-4-12 hex digits), so operators can read it aloud and grep for it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = crate::signing::hex(&self.0);
        write!(f, "{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
    }
}

pub(crate) fn encode(id: StoreId, role: Role, created_us: i64) -> [u8; FILE_BYTES] {
    let mut b = [0u8; FILE_BYTES];
    b[..8].copy_from_slice(MAGIC);
    b[8..10].copy_from_slice(&VERSION.to_le_bytes());
    b[10..12].copy_from_slice(&(role as u16).to_le_bytes());
    b[16..32].copy_from_slice(&id.0);
    b[32..40].copy_from_slice(&created_us.to_le_bytes());
    let crc = crc32fast::hash(&b[..40]);
    b[40..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes an identity file: `(id, role, created_us)`, or what is wrong with it.
pub(crate) fn decode(b: &[u8]) -> std::result::Result<(StoreId, u16, i64), String> {
    if b.len() != FILE_BYTES || &b[..8] != MAGIC {
        return Err(format!("not a store identity file ({} bytes)", b.len()));
    }
    if crc32fast::hash(&b[..40]) != le_u32(b, 40) {
        return Err("store identity file fails its CRC".into());
    }
    let version = u16::from_le_bytes([b[8], b[9]]);
    if version != VERSION {
        return Err(format!("store identity version {version} is not supported"));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&b[16..32]);
    Ok((StoreId(id), u16::from_le_bytes([b[10], b[11]]), le_u64(b, 32) as i64))
}

/// Reads `dir`'s identity file: `None` when there is none (or no such directory).
pub(crate) fn read(vfs: &Arc<dyn Vfs>, dir: &Path, role: Role) -> Result<Option<StoreId>> {
    let path = dir.join(FILE_NAME);
    if !vfs.exists(&path) {
        return Ok(None);
    }
    let f = vfs.open(&path).map_err(|e| Error::io("open store identity", &path, e))?;
    let mut buf = [0u8; FILE_BYTES + 1];
    let n = read_up_to(f.as_ref(), &mut buf, 0).map_err(|e| Error::io("read store identity", &path, e))?;
    let (id, stored_role, _) = decode(&buf[..n]).map_err(|detail| Error::Corrupt { path: path.clone(), offset: Some(0), detail })?;
    if stored_role != role as u16 {
        return Err(Error::Identity(format!(
            "{} is the identity file of a store's {}, found in its {} ({}): the directories are mixed up",
            path.display(),
            match stored_role {
                1 => "root",
                2 => "key directory",
                3 => "KEK directory",
                _ => "unknown directory",
            },
            role.name(),
            dir.display()
        )));
    }
    Ok(Some(id))
}

/// Writes `dir`'s identity file (crash-atomically; the directory is created 0700 if missing).
pub(crate) fn write(vfs: &Arc<dyn Vfs>, dir: &Path, role: Role, id: StoreId, now_us: i64) -> Result<()> {
    vfs.create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let path = dir.join(FILE_NAME);
    write_file_atomic(vfs.as_ref(), dir, &path, &encode(id, role, now_us)).map_err(|e| Error::io("write store identity", &path, e))
}

/// Names in `dir` that only an existing store writes (so their presence without an identity
/// file means the directory belongs to some store, never to a new one).
fn store_files(vfs: &Arc<dyn Vfs>, dir: &Path, is_store_file: impl Fn(&str) -> bool) -> Result<Vec<String>> {
    if !vfs.exists(dir) {
        return Ok(Vec::new());
    }
    let names = vfs.list_dir(dir).map_err(|e| Error::io("list directory", dir, e))?;
    Ok(names.into_iter().filter(|n| is_store_file(n)).collect())
}

fn root_has_store_files(vfs: &Arc<dyn Vfs>, root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for (sub, file) in [("catalog", "catalog.log"), ("control", "control.log"), ("audit", "audit.log")] {
        if vfs.exists(&root.join(sub).join(file)) {
            found.push(format!("{sub}/{file}"));
        }
    }
    let segs = root.join("segments");
    if !store_files(vfs, &segs, |_| true)?.is_empty() {
        found.push("segments/".into());
    }
    Ok(found)
}

fn key_dir_has_store_files(vfs: &Arc<dyn Vfs>, key_dir: &Path) -> Result<Vec<String>> {
    store_files(vfs, key_dir, |n| (n.starts_with("keystore-") && n.contains(".cvk")) || n == "signing.key" || n.starts_with("audit.anchor"))
}

/// Establishes the identity of the store at `root` with keys in `key_dir`, creating it only
/// for a new store (an empty root and an empty key directory). Creation writes the key
/// directory's file first and the root's last, so the root's file is the commit point: a
/// crash in between leaves a key directory with an identity and no keys, which the next open
/// completes.
pub(crate) fn establish(vfs: &Arc<dyn Vfs>, root: &Path, key_dir: &Path, now_us: i64) -> Result<(StoreId, bool)> {
    let r = read(vfs, root, Role::Root)?;
    let k = if key_dir == root { r } else { read(vfs, key_dir, Role::KeyDir)? };
    match (r, k) {
        (Some(r), Some(k)) if r == k => Ok((r, false)),
        (Some(r), Some(k)) => Err(Error::Identity(format!(
            "the root {} belongs to store {r} but the key directory {} belongs to store {k}: check key_dir",
            root.display(),
            key_dir.display()
        ))),
        (Some(r), None) => Err(Error::Identity(format!(
            "the key directory {} holds no keys of store {r} (root {}): set key_dir to that store's key directory; \
             a new key store is never created for an existing root",
            key_dir.display(),
            root.display()
        ))),
        (None, k) => {
            let root_files = root_has_store_files(vfs, root)?;
            if !root_files.is_empty() {
                return Err(Error::Identity(format!(
                    "the root {} holds store files ({}) but no {FILE_NAME}: it is not a store this version created, or its identity file was removed",
                    root.display(),
                    root_files.join(", ")
                )));
            }
            let key_files = key_dir_has_store_files(vfs, key_dir)?;
            if let Some(k) = k {
                if !key_files.is_empty() {
                    return Err(Error::Identity(format!(
                        "the key directory {} belongs to store {k}, whose root is not {}: check data_dir",
                        key_dir.display(),
                        root.display()
                    )));
                }
            } else if !key_files.is_empty() {
                return Err(Error::Identity(format!(
                    "the key directory {} holds key files ({}) but no {FILE_NAME}: it belongs to another store",
                    key_dir.display(),
                    key_files.join(", ")
                )));
            }
            let id = match k {
                Some(k) => k,
                None => StoreId::generate()?,
            };
            if key_dir != root {
                write(vfs, key_dir, Role::KeyDir, id, now_us)?;
            }
            Ok((id, true))
        }
    }
}

/// The commit point of a store's creation: the root's identity file.
pub(crate) fn commit_root(vfs: &Arc<dyn Vfs>, root: &Path, id: StoreId, now_us: i64) -> Result<()> {
    write(vfs, root, Role::Root, id, now_us)
}

/// Binds a file KEK provider's directory to `id`: refuses a directory of another store, or one
/// holding KEK files without an identity.
pub(crate) fn bind_kek_dir(vfs: &Arc<dyn Vfs>, dir: &Path, id: StoreId, now_us: i64) -> Result<()> {
    match read(vfs, dir, Role::KekDir)? {
        Some(k) if k == id => Ok(()),
        Some(k) => Err(Error::Identity(format!(
            "the KEK directory {} belongs to store {k}, not to store {id}: check the KEK provider's directory",
            dir.display()
        ))),
        None => {
            let keks = store_files(vfs, dir, |n| n.starts_with("kek-") && n.ends_with(".key"))?;
            if !keks.is_empty() {
                return Err(Error::Identity(format!(
                    "the KEK directory {} holds KEKs ({}) but no {FILE_NAME}: they belong to another store, and none is touched",
                    dir.display(),
                    keks.join(", ")
                )));
            }
            write(vfs, dir, Role::KekDir, id, now_us)
        }
    }
}

/// Refuses a key file that other local users can read or write (as ssh refuses a private key
/// with loose permissions), naming the command that fixes it.
pub(crate) fn check_private(vfs: &Arc<dyn Vfs>, path: &Path) -> Result<()> {
    match vfs.mode(path) {
        Ok(Some(mode)) if mode & 0o077 != 0 => Err(Error::Permissions { path: path.to_path_buf(), mode }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("stat key file", path, e)),
    }
}

/// Every file directly in `dir` through [`check_private`].
pub(crate) fn check_private_dir(vfs: &Arc<dyn Vfs>, dir: &Path) -> Result<()> {
    if !vfs.exists(dir) {
        return Ok(());
    }
    for n in vfs.list_dir(dir).map_err(|e| Error::io("list key directory", dir, e))? {
        check_private(vfs, &dir.join(n))?;
    }
    Ok(())
}

/// The lock file of a store directory.
pub(crate) fn lock_path(dir: &Path) -> PathBuf {
    dir.join("LOCK")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemVfs;

    #[test]
    fn identity_files_round_trip_and_refuse_damage() {
        let id = StoreId([7; 16]);
        let b = encode(id, Role::KeyDir, 42);
        assert_eq!(decode(&b), Ok((id, Role::KeyDir as u16, 42)));
        let mut bad = b;
        bad[20] ^= 1;
        assert!(decode(&bad).is_err());
        assert!(decode(&b[..40]).is_err());
        assert_eq!(id.to_string(), "07070707-0707-0707-0707-070707070707");
    }

    #[test]
    fn a_root_with_a_foreign_or_missing_key_directory_is_refused() {
        let vfs: Arc<dyn Vfs> = Arc::new(MemVfs::new());
        let (id, created) = establish(&vfs, Path::new("/r"), Path::new("/k"), 0).expect("new store");
        assert!(created);
        commit_root(&vfs, Path::new("/r"), id, 0).expect("commit");
        assert_eq!(establish(&vfs, Path::new("/r"), Path::new("/k"), 0).expect("reopen"), (id, false));
        let missing = establish(&vfs, Path::new("/r"), Path::new("/r/keys"), 0).expect_err("missing key dir");
        assert!(missing.to_string().contains("/r/keys") && missing.to_string().contains("never created"), "{missing}");
        assert!(!vfs.exists(Path::new("/r/keys/store.id")), "nothing is created for a refused open");
        // A second store's key directory.
        let (other, _) = establish(&vfs, Path::new("/r2"), Path::new("/k2"), 0).expect("second store");
        commit_root(&vfs, Path::new("/r2"), other, 0).expect("commit");
        let mixed = establish(&vfs, Path::new("/r"), Path::new("/k2"), 0).expect_err("foreign key dir");
        assert!(mixed.to_string().contains("/k2") && mixed.to_string().contains("/r"), "{mixed}");
        // An identity file copied into the wrong role.
        let bytes = encode(id, Role::Root, 0);
        vfs.create_dir_all(Path::new("/k3")).expect("dir");
        write_file_atomic(vfs.as_ref(), Path::new("/k3"), Path::new("/k3/store.id"), &bytes).expect("write");
        assert!(matches!(read(&vfs, Path::new("/k3"), Role::KeyDir), Err(Error::Identity(_))));
    }

    #[test]
    fn a_kek_directory_of_another_store_is_refused() {
        let vfs: Arc<dyn Vfs> = Arc::new(MemVfs::new());
        bind_kek_dir(&vfs, Path::new("/kek"), StoreId([1; 16]), 0).expect("bind");
        bind_kek_dir(&vfs, Path::new("/kek"), StoreId([1; 16]), 0).expect("same store");
        assert!(matches!(bind_kek_dir(&vfs, Path::new("/kek"), StoreId([2; 16]), 0), Err(Error::Identity(_))));
    }
}
