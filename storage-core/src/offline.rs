//! Maintenance over a store that no process has open: read-only, never creating, cutting,
//! rotating or destroying anything. Each tool takes a shared lock on the root, so it refuses
//! to run beside a server (whose exclusive lock conflicts) instead of reading files that are
//! being written (SECURITY.md "Store identity and locks").

use std::path::Path;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::io::{LockMode, StdVfs, Vfs};
use crate::log::Access;
use crate::segment::writer::segment_file_name;
use crate::store::CorruptionReport;
use crate::{Clock, Error, Result, SystemClock};

/// Checks every record (CRC and structure) and the footer of every sealed segment of the store
/// at `root`, without keys and without writing anything. Refuses a directory that is not a
/// store's root, and refuses while another process holds the store.
pub fn scrub(root: &Path) -> Result<Vec<CorruptionReport>> {
    scrub_with(&(Arc::new(StdVfs) as Arc<dyn Vfs>), root)
}

/// [`scrub`] on any [`Vfs`].
pub fn scrub_with(vfs: &Arc<dyn Vfs>, root: &Path) -> Result<Vec<CorruptionReport>> {
    let _lock = shared_lock(vfs, root)?;
    let loaded = Catalog::open(vfs, &root.join("catalog"), Access::Read)?;
    let now = SystemClock.now_us();
    let report = |path: &Path, segment, offset, detail: String| CorruptionReport {
        path: path.to_path_buf(),
        segment: Some(segment),
        offset,
        detail,
        detected_us: now,
    };
    let mut found = Vec::new();
    for (id, entry) in &loaded.entries {
        let Some(info) = entry.sealed else {
            // Left open by a crash: the next open of the store recovers it.
            continue;
        };
        let path = root.join("segments").join(&entry.camera).join(segment_file_name(*id));
        for (offset, detail) in crate::store::check_sealed_segment(vfs, &path, &info)? {
            found.push(report(&path, *id, offset, detail));
        }
    }
    Ok(found)
}

/// A shared lock on a store's root, after checking that it is one.
fn shared_lock(vfs: &Arc<dyn Vfs>, root: &Path) -> Result<Box<dyn crate::io::VfsLock>> {
    if crate::identity::read(vfs, root, crate::identity::Role::Root)?.is_none() {
        return Err(Error::Identity(format!("{} is not a store's root (it holds no {})", root.display(), crate::identity::FILE_NAME)));
    }
    let path = crate::identity::lock_path(root);
    vfs.try_lock(&path, LockMode::Shared).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Error::Locked {
                path: path.clone(),
                detail: "a running server has this store open; stop it, or check it through the server".into(),
            }
        } else {
            Error::io("lock store root", &path, e)
        }
    })
}
