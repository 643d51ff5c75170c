//! An in-memory file system that can show the disk as a crash would leave it.
//!
//! Each file keeps its live bytes and its durable bytes (as of the last `sync_data`); the
//! namespace keeps live and durable directory entries (as of the last `sync_dir` of the
//! parent). [`MemVfs::crash`] builds a new file system from the durable state, optionally keeping
//! a torn prefix of each file's last unsynced write. Every write can also be journalled so that
//! a test can play the adversary who holds every version of every file.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Vfs, VfsFile};

/// What survives a simulated crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Only what was synced survives.
    LoseUnsynced,
    /// What was synced survives, plus the first half of each file's last unsynced write.
    TearLastWrite,
    /// Everything written survives (the OS wrote it back before power went); directory entries
    /// still need a directory sync.
    KeepUnsynced,
}

/// One write as the journal saw it.
#[derive(Debug, Clone)]
pub struct WriteRecord {
    /// File written.
    pub path: PathBuf,
    /// Offset of the write.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

#[derive(Debug, Default, Clone)]
struct FileData {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// The last write since the last sync, for torn-write crashes.
    last_unsynced: Option<(u64, Vec<u8>)>,
}

#[derive(Default)]
struct State {
    live: BTreeMap<PathBuf, Arc<Mutex<FileData>>>,
    durable: BTreeMap<PathBuf, Arc<Mutex<FileData>>>,
    dirs: BTreeSet<PathBuf>,
    journal: Option<Vec<WriteRecord>>,
    /// Held locks: -1 exclusive, n > 0 shared by n holders. A crash releases them all, as the
    /// kernel releases a dead process's `flock`s.
    locks: BTreeMap<PathBuf, i64>,
}

/// The in-memory [`Vfs`]. Cloning shares the same file system.
#[derive(Clone, Default)]
pub struct MemVfs {
    state: Arc<Mutex<State>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another test thread must not hide this file system's state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct MemFile {
    path: PathBuf,
    data: Arc<Mutex<FileData>>,
    fs: Arc<Mutex<State>>,
}

impl MemVfs {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts journalling every write (for the disk-image adversary).
    pub fn record_writes(&self) {
        lock(&self.state).journal.get_or_insert_with(Vec::new);
    }

    /// Every write journalled so far.
    pub fn journal(&self) -> Vec<WriteRecord> {
        lock(&self.state).journal.clone().unwrap_or_default()
    }

    /// The file system a crash right now would leave behind.
    pub fn crash(&self, mode: CrashMode) -> MemVfs {
        let st = lock(&self.state);
        let mut out = State { dirs: st.dirs.clone(), journal: st.journal.clone(), ..State::default() };
        for (path, data) in &st.durable {
            let d = lock(data);
            let mut bytes = match mode {
                CrashMode::KeepUnsynced => d.live.clone(),
                _ => d.durable.clone(),
            };
            if mode == CrashMode::TearLastWrite {
                if let Some((off, w)) = &d.last_unsynced {
                    let keep = &w[..w.len() / 2];
                    let end = *off as usize + keep.len();
                    if bytes.len() < end {
                        bytes.resize(end, 0);
                    }
                    bytes[*off as usize..end].copy_from_slice(keep);
                }
            }
            let fd = Arc::new(Mutex::new(FileData { live: bytes.clone(), durable: bytes, last_unsynced: None }));
            out.live.insert(path.clone(), fd.clone());
            out.durable.insert(path.clone(), fd);
        }
        MemVfs { state: Arc::new(Mutex::new(out)) }
    }

    /// Paths of all live files.
    pub fn files(&self) -> Vec<PathBuf> {
        lock(&self.state).live.keys().cloned().collect()
    }

    /// The live contents of a file.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        lock(&self.state).live.get(path).map(|d| lock(d).live.clone())
    }

    /// Overwrites live bytes of a file in place (to simulate rot); the change is also durable.
    pub fn corrupt(&self, path: &Path, offset: u64, bytes: &[u8]) -> bool {
        let st = lock(&self.state);
        let Some(d) = st.live.get(path) else {
            return false;
        };
        let mut d = lock(d);
        let off = offset as usize;
        if off + bytes.len() > d.live.len() {
            return false;
        }
        d.live[off..off + bytes.len()].copy_from_slice(bytes);
        if d.durable.len() >= off + bytes.len() {
            d.durable[off..off + bytes.len()].copy_from_slice(bytes);
        }
        true
    }
}

struct MemLock {
    path: PathBuf,
    fs: Arc<Mutex<State>>,
}

impl super::VfsLock for MemLock {}

impl Drop for MemLock {
    fn drop(&mut self) {
        let mut st = lock(&self.fs);
        match st.locks.get(&self.path).copied() {
            Some(n) if n > 1 => {
                st.locks.insert(self.path.clone(), n - 1);
            }
            _ => {
                st.locks.remove(&self.path);
            }
        }
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

impl Vfs for MemVfs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        for a in path.ancestors() {
            st.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        let mut st = lock(&self.state);
        if st.live.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists"));
        }
        let parent = path.parent().unwrap_or(Path::new("/"));
        if !st.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        let data = Arc::new(Mutex::new(FileData::default()));
        st.live.insert(path.to_path_buf(), data.clone());
        Ok(Arc::new(MemFile { path: path.to_path_buf(), data, fs: self.state.clone() }))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        let st = lock(&self.state);
        let data = st.live.get(path).cloned().ok_or_else(|| not_found(path))?;
        Ok(Arc::new(MemFile { path: path.to_path_buf(), data, fs: self.state.clone() }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        lock(&self.state).live.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        let d = st.live.remove(from).ok_or_else(|| not_found(from))?;
        st.live.insert(to.to_path_buf(), d);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        let in_dir = |p: &Path| p.parent() == Some(path);
        let live: Vec<_> = st.live.iter().filter(|(p, _)| in_dir(p)).map(|(p, d)| (p.clone(), d.clone())).collect();
        st.durable.retain(|p, _| !in_dir(p));
        st.durable.extend(live);
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let st = lock(&self.state);
        if !st.dirs.contains(path) {
            return Err(not_found(path));
        }
        let mut names: BTreeSet<String> = BTreeSet::new();
        for p in st.live.keys().chain(st.dirs.iter()) {
            if p.parent() == Some(path) {
                if let Some(n) = p.file_name() {
                    names.insert(n.to_string_lossy().into_owned());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    fn exists(&self, path: &Path) -> bool {
        let st = lock(&self.state);
        st.live.contains_key(path) || st.dirs.contains(path)
    }

    fn try_lock(&self, path: &Path, mode: super::LockMode) -> io::Result<Box<dyn super::VfsLock>> {
        let mut st = lock(&self.state);
        let held = st.locks.get(path).copied().unwrap_or(0);
        let next = match mode {
            super::LockMode::Exclusive if held == 0 => -1,
            super::LockMode::Shared if held >= 0 => held + 1,
            _ => return Err(io::Error::from(io::ErrorKind::WouldBlock)),
        };
        st.locks.insert(path.to_path_buf(), next);
        Ok(Box::new(MemLock { path: path.to_path_buf(), fs: self.state.clone() }))
    }

    fn mode(&self, _path: &Path) -> io::Result<Option<u32>> {
        Ok(None)
    }
}

impl VfsFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let d = lock(&self.data);
        let off = offset as usize;
        if off >= d.live.len() {
            return Ok(0);
        }
        let n = buf.len().min(d.live.len() - off);
        buf[..n].copy_from_slice(&d.live[off..off + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        {
            let mut d = lock(&self.data);
            let off = offset as usize;
            let end = off + buf.len();
            if d.live.len() < end {
                d.live.resize(end, 0);
            }
            d.live[off..end].copy_from_slice(buf);
            d.last_unsynced = Some((offset, buf.to_vec()));
        }
        if let Some(j) = lock(&self.fs).journal.as_mut() {
            j.push(WriteRecord { path: self.path.clone(), offset, data: buf.to_vec() });
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut d = lock(&self.data);
        d.durable = d.live.clone();
        d.last_unsynced = None;
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.data).live.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        lock(&self.data).live.resize(len as usize, 0);
        Ok(())
    }
}
