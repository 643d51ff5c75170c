//! A [`Vfs`] wrapper that starts failing after a countdown of mutating operations.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::Arc;

use super::{Vfs, VfsFile};

/// Which error the injected failures return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// EIO: the device failed.
    Eio,
    /// ENOSPC: the device is full.
    NoSpace,
}

#[derive(Default)]
struct Faults {
    /// Mutating operations allowed before failures start; negative means never fail.
    budget: AtomicI64,
    /// 0 = EIO, 1 = ENOSPC.
    kind: AtomicU8,
    /// Whether a failure has been returned.
    fired: std::sync::atomic::AtomicBool,
}

impl Faults {
    fn check(&self) -> io::Result<()> {
        if self.budget.load(Ordering::SeqCst) < 0 {
            return Ok(());
        }
        if self.budget.fetch_sub(1, Ordering::SeqCst) > 0 {
            return Ok(());
        }
        // Stay at zero so every later call fails too.
        self.budget.store(0, Ordering::SeqCst);
        self.fired.store(true, Ordering::SeqCst);
        Err(match self.kind.load(Ordering::SeqCst) {
            1 => io::Error::from_raw_os_error(28),
            _ => io::Error::from_raw_os_error(5),
        })
    }
}

/// Wraps a [`Vfs`]; after [`FaultyVfs::fail_after`] `n` mutating operations (write, sync,
/// create, rename, remove, truncate) every further one fails until [`FaultyVfs::heal`].
#[derive(Clone)]
pub struct FaultyVfs {
    inner: Arc<dyn Vfs>,
    faults: Arc<Faults>,
}

impl FaultyVfs {
    /// Wraps `inner`, healthy.
    pub fn new(inner: Arc<dyn Vfs>) -> Self {
        let faults = Arc::new(Faults::default());
        faults.budget.store(-1, Ordering::SeqCst);
        FaultyVfs { inner, faults }
    }

    /// Fails every mutating operation after the next `n` with `kind`.
    pub fn fail_after(&self, n: u64, kind: FaultKind) {
        self.faults.kind.store(if kind == FaultKind::NoSpace { 1 } else { 0 }, Ordering::SeqCst);
        self.faults.budget.store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::SeqCst);
    }

    /// Whether an injected failure has been returned since creation.
    pub fn fired(&self) -> bool {
        self.faults.fired.load(Ordering::SeqCst)
    }

    /// Stops failing.
    pub fn heal(&self) {
        self.faults.budget.store(-1, Ordering::SeqCst);
    }
}

struct FaultyFile {
    inner: Arc<dyn VfsFile>,
    faults: Arc<Faults>,
}

impl VfsFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.faults.check()?;
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.faults.check()?;
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.faults.check()?;
        self.inner.set_len(len)
    }
}

impl Vfs for FaultyVfs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.faults.check()?;
        self.inner.create_dir_all(path)
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        self.faults.check()?;
        let inner = self.inner.create_new(path)?;
        Ok(Arc::new(FaultyFile { inner, faults: self.faults.clone() }))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        let inner = self.inner.open(path)?;
        Ok(Arc::new(FaultyFile { inner, faults: self.faults.clone() }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.faults.check()?;
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults.check()?;
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.faults.check()?;
        self.inner.sync_dir(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn try_lock(&self, path: &Path, mode: super::LockMode) -> io::Result<Box<dyn super::VfsLock>> {
        self.inner.try_lock(path, mode)
    }
    fn mode(&self, path: &Path) -> io::Result<Option<u32>> {
        self.inner.mode(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
}
