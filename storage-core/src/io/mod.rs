//! All disk I/O goes through [`Vfs`] and [`VfsFile`].
//!
//! The engine never touches `std::fs` directly, so tests can swap in [`MemVfs`] (which keeps a
//! "live" and a "durable" image and can build the disk a crash would leave) and [`FaultyVfs`]
//! (which fails with EIO or ENOSPC after a countdown) without changing engine code.

mod fault;
mod mem;
mod std_fs;

use std::io;
use std::path::Path;
use std::sync::Arc;

pub use fault::{FaultKind, FaultyVfs};
pub use mem::{CrashMode, MemVfs, WriteRecord};
pub use std_fs::StdVfs;

/// A file system: the handful of operations the engine needs, each with a crash meaning.
///
/// Durability contract (POSIX-like): file contents written with [`VfsFile::write_at`] become
/// durable at [`VfsFile::sync_data`]; a created, renamed or removed directory entry becomes
/// durable at [`Vfs::sync_dir`] of its parent.
pub trait Vfs: Send + Sync + 'static {
    /// Creates `path` and its missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates a new empty file, failing if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries directly under `path`.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Takes an advisory lock on the file `path` (created if missing) for as long as the
    /// returned guard lives: exclusive for a writer, shared for a reader. Fails with
    /// [`io::ErrorKind::WouldBlock`] while another process (or another open) holds a
    /// conflicting lock; never waits.
    fn try_lock(&self, path: &Path, mode: LockMode) -> io::Result<Box<dyn VfsLock>>;
    /// The file's permission bits (`st_mode & 0o7777`), when the file system has them.
    fn mode(&self, path: &Path) -> io::Result<Option<u32>>;
}

/// How a [`Vfs::try_lock`] lock is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// One holder: a process that writes the store.
    Exclusive,
    /// Any number of readers, no writer.
    Shared,
}

/// A held lock; dropping it releases the lock.
pub trait VfsLock: Send + Sync {}

/// Permission bits of files the engine creates: owner read and write only. Key files must
/// never be readable by another local user (SECURITY.md "File modes").
pub const FILE_MODE: u32 = 0o600;
/// Permission bits of directories the engine creates: owner only.
pub const DIR_MODE: u32 = 0o700;

/// An open file addressed by absolute offsets (no shared cursor, so readers never race writers).
#[allow(clippy::len_without_is_empty, reason = "a file's length is a size, not a collection's")]
pub trait VfsFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// Creates `path` (in directory `dir`) holding exactly `bytes`, crash-atomically: write a
/// temporary file, fsync it, rename it into place, fsync the directory. A crash leaves either no
/// file or the whole file, never a partial one.
pub fn write_file_atomic(vfs: &dyn Vfs, dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    if vfs.exists(&tmp) {
        vfs.remove_file(&tmp)?;
    }
    let f = vfs.create_new(&tmp)?;
    f.write_at(bytes, 0)?;
    f.sync_data()?;
    vfs.rename(&tmp, path)?;
    vfs.sync_dir(dir)
}

/// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
pub fn read_exact_at(file: &dyn VfsFile, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = file.read_at(buf, offset)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Reads as many bytes as are available at `offset`, up to `buf.len()`.
pub fn read_up_to(file: &dyn VfsFile, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}
