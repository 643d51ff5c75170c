//! Retention policy, legal holds and erasure bookkeeping, persisted in the control log
//! (`control/control.log`, JSON payloads in the shared record-log framing).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::io::Vfs;
use crate::log::{Access, RecordLog};
use crate::store::Span;
use crate::{Error, Result};

/// The legal floor: ordinary video is kept at least 30 days (TN 11.1). No setting, call or
/// code path goes below it.
pub const RETENTION_DAYS_MIN: u32 = 30;
/// A century: longer is a typo, not a policy.
pub const RETENTION_DAYS_MAX: u32 = 36_500;
/// Cameras one hold may name.
pub const HOLD_CAMERAS_MAX: usize = 1024;
/// Longest text field of a hold (case reference, reason, names).
pub const HOLD_TEXT_BYTES_MAX: usize = 1024;
/// Segments erased per intent (and per audit receipt); a larger sweep runs several.
pub const ERASE_BATCH_SEGMENTS_MAX: usize = 8192;
/// Largest control-log payload (a hold naming 1,024 cameras, or an erase intent of a batch).
pub(crate) const CONTROL_PAYLOAD_BYTES_MAX: usize = 2 << 20;

const MAGIC: &[u8; 8] = b"CAMVCTRL";
const FILE_NAME: &str = "control.log";
const RECORD_TYPE: u8 = 1;

pub(crate) const US_PER_DAY: i64 = 86_400_000_000;

/// A request to place a legal hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRequest {
    /// Case reference (administrative or criminal case).
    pub case_ref: String,
    /// Cameras held.
    pub cameras: Vec<String>,
    /// Start of the held range (µs since the epoch).
    pub from_us: i64,
    /// End of the held range (exclusive).
    pub to_us: i64,
    /// Who places it.
    pub placed_by: String,
    /// Why.
    pub reason: String,
}

/// Who released a hold, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRelease {
    /// Who.
    pub by: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at_us: i64,
}

/// A legal hold. It has no expiry: it lasts until released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Its id.
    pub id: u64,
    /// What was asked for.
    #[serde(flatten)]
    pub request: HoldRequest,
    /// When it was placed.
    pub placed_us: i64,
    /// Recorded spans it actually protects, per camera, as of placing (video already erased
    /// before the hold was placed is not there).
    pub protected: BTreeMap<String, Vec<Span>>,
    /// Set once released.
    pub released: Option<HoldRelease>,
}

impl Hold {
    /// Whether the hold is in force and covers frames `[first, last]` of `camera`.
    pub fn covers(&self, camera: &str, first_ts_us: i64, last_ts_us: i64) -> bool {
        self.released.is_none()
            && first_ts_us < self.request.to_us
            && last_ts_us >= self.request.from_us
            && self.request.cameras.iter().any(|c| c == camera)
    }
}

/// One erased segment in an intent or receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasedSegment {
    /// Segment id.
    pub segment: u64,
    /// Its camera.
    pub camera: String,
    /// First frame time.
    pub first_ts_us: i64,
    /// Last frame time.
    pub last_ts_us: i64,
}

/// An erasure decided and durable, but maybe not yet carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EraseIntent {
    /// Its id.
    pub erase_id: u64,
    /// The rule that erased: `retention`, `explicit`, `decommission`.
    pub rule: String,
    /// Who (`system` for the sweeper).
    pub actor: String,
    /// When decided.
    pub at_us: i64,
    /// The segments.
    pub segments: Vec<ErasedSegment>,
    /// Why, as the requester gave it (decommissions); empty for retention.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Proof of an erasure, also written to the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EraseReceipt {
    /// The intent carried out.
    #[serde(flatten)]
    pub intent: EraseIntent,
    /// Segments whose data keys were removed from the key store by this erasure.
    pub keys_destroyed: Vec<u64>,
    /// The KEK destroyed, after which no copy of an older key store generation unwraps.
    pub kek_destroyed: u64,
    /// Key store generations before and after.
    pub key_generations: (u64, u64),
    /// When the erasure completed.
    pub completed_us: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ControlRecord {
    RetentionSet { camera: String, days: u32, actor: String, reason: String, at_us: i64 },
    HoldPlaced(Hold),
    HoldReleased { id: u64, release: HoldRelease },
    EraseIntent(EraseIntent),
    EraseDone { erase_id: u64, at_us: i64 },
}

/// The control log and the state replayed from it.
pub(crate) struct ControlState {
    log: RecordLog,
    pub default_days: u32,
    pub per_camera: HashMap<String, u32>,
    pub holds: BTreeMap<u64, Hold>,
    pub pending: BTreeMap<u64, EraseIntent>,
    pub next_hold: u64,
    pub next_erase: u64,
}

/// Refuses a retention below the floor or above the ceiling.
pub(crate) fn check_days(days: u32) -> Result<()> {
    if days < RETENTION_DAYS_MIN {
        return Err(Error::FailedPrecondition(format!(
            "retention of {days} days is below the legal floor of {RETENTION_DAYS_MIN} days (TN 11.1); nothing may be kept for less"
        )));
    }
    if days > RETENTION_DAYS_MAX {
        return Err(Error::InvalidArgument(format!("retention of {days} days is above {RETENTION_DAYS_MAX}")));
    }
    Ok(())
}

pub(crate) fn check_text(what: &str, s: &str, required: bool) -> Result<()> {
    if required && s.trim().is_empty() {
        return Err(Error::InvalidArgument(format!("{what} is required")));
    }
    if s.len() > HOLD_TEXT_BYTES_MAX {
        return Err(Error::LimitExceeded { what: "hold text bytes", actual: s.len() as u64, max: HOLD_TEXT_BYTES_MAX as u64 });
    }
    Ok(())
}

impl ControlState {
    pub(crate) fn open(vfs: &Arc<dyn Vfs>, dir: &Path, default_days: u32) -> Result<ControlState> {
        let mut per_camera = HashMap::new();
        let mut holds = BTreeMap::new();
        let mut pending = BTreeMap::new();
        let (mut next_hold, mut next_erase) = (1, 1);
        let path = dir.join(FILE_NAME);
        let log = RecordLog::open(
            vfs,
            dir,
            FILE_NAME,
            MAGIC,
            CONTROL_PAYLOAD_BYTES_MAX,
            Access::Write { keep_torn: false },
            0,
            |pos, ty, payload| {
                let rec: ControlRecord = match (ty, serde_json::from_slice(payload)) {
                    (RECORD_TYPE, Ok(r)) => r,
                    _ => {
                        return Err(Error::Corrupt {
                            path: path.clone(),
                            offset: Some(pos),
                            detail: "control record has a valid CRC but does not decode".into(),
                        })
                    }
                };
                match rec {
                    ControlRecord::RetentionSet { camera, days, .. } => {
                        per_camera.insert(camera, days);
                    }
                    ControlRecord::HoldPlaced(h) => {
                        next_hold = next_hold.max(h.id + 1);
                        holds.insert(h.id, h);
                    }
                    ControlRecord::HoldReleased { id, release } => {
                        if let Some(h) = holds.get_mut(&id) {
                            h.released = Some(release);
                        }
                    }
                    ControlRecord::EraseIntent(i) => {
                        next_erase = next_erase.max(i.erase_id + 1);
                        pending.insert(i.erase_id, i);
                    }
                    ControlRecord::EraseDone { erase_id, .. } => {
                        pending.remove(&erase_id);
                    }
                }
                Ok(())
            },
        )?;
        Ok(ControlState { log, default_days, per_camera, holds, pending, next_hold, next_erase })
    }

    /// Appends and fsyncs one record.
    pub(crate) fn append(&mut self, rec: &ControlRecord) -> Result<()> {
        let payload = serde_json::to_vec(rec).map_err(|e| Error::InvalidArgument(format!("control record does not encode: {e}")))?;
        self.log.append(RECORD_TYPE, payload).map(|_| ())
    }

    /// Retention of `camera`, in days.
    pub(crate) fn days(&self, camera: &str) -> u32 {
        self.per_camera.get(camera).copied().unwrap_or(self.default_days).max(RETENTION_DAYS_MIN)
    }

    /// Holds in force covering `[first, last]` of `camera`.
    pub(crate) fn holding(&self, camera: &str, first_ts_us: i64, last_ts_us: i64) -> Vec<u64> {
        self.holds.values().filter(|h| h.covers(camera, first_ts_us, last_ts_us)).map(|h| h.id).collect()
    }
}
