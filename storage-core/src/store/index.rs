//! The in-memory camera/time index, rebuilt from the catalog at open.

use std::collections::BTreeMap;

use crate::catalog::SealedInfo;
use crate::segment::writer::OpenView;
use crate::SegmentId;

/// State of an indexed segment.
#[derive(Clone)]
pub(crate) enum EntryState {
    Sealed(SealedInfo),
    /// Being written by a stream; readers see its durable part through `view`.
    Open {
        view: OpenView,
    },
}

/// One segment of a camera: frames with timestamps in `[first_ts_us, last_ts_us]`.
#[derive(Clone)]
pub(crate) struct IndexEntry {
    pub id: SegmentId,
    pub first_ts_us: i64,
    pub last_ts_us: i64,
    pub state: EntryState,
}

/// A camera's segments keyed by first timestamp. Segments never overlap, so the key is unique.
#[derive(Default)]
pub(crate) struct CameraIndex {
    pub segments: BTreeMap<i64, IndexEntry>,
}

impl CameraIndex {
    /// The segment (other than `own`) that a stream extending from `after` (exclusive; `None` for
    /// a stream's first frame) to `ts` would collide with.
    pub(crate) fn collision(&self, own: Option<SegmentId>, after: Option<i64>, ts: i64) -> Option<&IndexEntry> {
        if let Some((_, e)) = self.segments.range(..=ts).next_back() {
            if Some(e.id) != own && e.last_ts_us >= ts {
                return Some(e);
            }
        }
        let lo = after.unwrap_or(ts);
        if lo < ts {
            if let Some((_, e)) = self.segments.range(lo.saturating_add(1)..=ts).find(|(_, e)| Some(e.id) != own) {
                return Some(e);
            }
        }
        None
    }

    /// Entries that may hold frames in `[from, to)`, plus the one before `from` (for the key
    /// frame at or before `from`).
    pub(crate) fn covering(&self, from: i64, to: i64) -> Vec<IndexEntry> {
        let mut out: Vec<IndexEntry> = Vec::new();
        if let Some((_, e)) = self.segments.range(..=from).next_back() {
            if e.last_ts_us >= from {
                out.push(e.clone());
            }
        }
        let start = from.saturating_add(1);
        if start < to {
            out.extend(self.segments.range(start..to).map(|(_, e)| e.clone()));
        }
        out
    }

    pub(crate) fn find_mut(&mut self, first_ts: i64, id: SegmentId) -> Option<&mut IndexEntry> {
        self.segments.get_mut(&first_ts).filter(|e| e.id == id)
    }
}
