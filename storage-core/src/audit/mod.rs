//! The audit log: append-only, hash-chained, with signed checkpoints (TN 9.4, 10.2, 20).
//!
//! Each record's payload is `hash (32) ‖ body`, where `body` is the entry as JSON and
//! `hash = SHA-256(previous hash ‖ body)`. Every [`CHECKPOINT_EVERY`] entries the store appends a
//! checkpoint entry whose body carries an Ed25519 signature of the previous entry's hash. Verify
//! recomputes the chain and checks every signature; see SECURITY.md "Audit log: tamper model" for what it can
//! and cannot detect.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::io::{read_up_to, Vfs};
use crate::log::{Access, RecordLog, FRAME_LEN, HEADER_LEN};
use crate::segment::format::le_u32;
use crate::signing::{hex, sign_hex, verify_hex};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"CAMVAUDT";
const FILE_NAME: &str = "audit.log";
const RECORD_TYPE: u8 = 1;
/// Largest audit entry body. An erase receipt lists its segments; 1 MiB holds ~8,000 of them,
/// and the sweeper splits bigger erasures into several receipts.
pub const ENTRY_BYTES_MAX: usize = 1 << 20;
/// Longest free-text field (purpose, reason, references).
pub const TEXT_BYTES_MAX: usize = 4096;
/// Entries between signed checkpoints.
pub const CHECKPOINT_EVERY: u64 = 256;
/// Action name of checkpoint entries.
pub const CHECKPOINT_ACTION: &str = "audit.checkpoint";

/// What the caller records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Who (principal name or "system").
    pub actor: String,
    /// What, e.g. `video.read`, `video.export`, `login`, `hold.place`, `retention.set`, `erase`.
    pub action: String,
    /// Cameras concerned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cameras: Vec<String>,
    /// Start of the time range concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_us: Option<i64>,
    /// End of the time range concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_us: Option<i64>,
    /// Declared purpose of a video access.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    /// On whose request.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub requester: String,
    /// Written approval reference (TN 8.1).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub approval_ref: String,
    /// Declared justification of an admin's video access (TN 6.2).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub justification: String,
    /// Anything else (receipts, digests, outcomes), as JSON.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When, µs since the epoch (store clock).
    pub at_us: i64,
    /// The recorded fields.
    #[serde(flatten)]
    pub record: AuditRecord,
    /// Hex SHA-256 of the previous entry (zeros for the first).
    pub prev_hash: String,
}

/// A query over the log; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Entries at or after.
    pub from_us: Option<i64>,
    /// Entries before.
    pub to_us: Option<i64>,
    /// Exact actor.
    pub actor: Option<String>,
    /// Exact action, or a prefix ending in `.` (e.g. `video.`).
    pub action: Option<String>,
    /// Entries naming this camera.
    pub camera: Option<String>,
    /// At most this many entries (newest last).
    pub limit: Option<usize>,
}

/// Outcome of [`crate::Store::verify_audit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    /// Entries whose hash chained correctly.
    pub entries: u64,
    /// Checkpoints whose signatures verified.
    pub checkpoints: u64,
    /// The first problem: byte offset, entry sequence number where known, and what.
    pub problem: Option<(u64, Option<u64>, String)>,
    /// Hex hash of the last good entry (an anchor to keep elsewhere).
    pub head_hash: String,
}

pub(crate) struct AuditLog {
    log: RecordLog,
    path: PathBuf,
    next_seq: u64,
    head: [u8; 32],
    signer: SigningKey,
    anchor: AnchorFile,
    poisoned: Option<String>,
}

fn chain(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

fn check_text(what: &'static str, s: &str) -> Result<()> {
    if s.len() > TEXT_BYTES_MAX {
        return Err(Error::LimitExceeded { what, actual: s.len() as u64, max: TEXT_BYTES_MAX as u64 });
    }
    Ok(())
}

/// Name of the anchor file in the key directory.
pub(crate) const ANCHOR_FILE: &str = "audit.anchor";
const ANCHOR_MAGIC: &[u8; 8] = b"CAMVANCH";
/// One anchor slot: magic (8) + seq (8) + log length (8) + entry hash (32) + crc32 (4) + zero
/// padding (4). The file holds two slots, written alternately, so a torn write of one leaves
/// the other.
const ANCHOR_SLOT_BYTES: usize = 64;

/// The last acknowledged entry, kept apart from the log (in the key directory) so that a log
/// deleted, truncated or rolled back to an older copy is detected at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Anchor {
    pub seq: u64,
    pub log_len: u64,
    pub hash: [u8; 32],
}

fn encode_anchor(a: &Anchor) -> [u8; ANCHOR_SLOT_BYTES] {
    let mut b = [0u8; ANCHOR_SLOT_BYTES];
    b[..8].copy_from_slice(ANCHOR_MAGIC);
    b[8..16].copy_from_slice(&a.seq.to_le_bytes());
    b[16..24].copy_from_slice(&a.log_len.to_le_bytes());
    b[24..56].copy_from_slice(&a.hash);
    let crc = crc32fast::hash(&b[..56]);
    b[56..60].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_anchor(b: &[u8]) -> Option<Anchor> {
    if b.len() < ANCHOR_SLOT_BYTES || &b[..8] != ANCHOR_MAGIC || crc32fast::hash(&b[..56]) != le_u32(b, 56) {
        return None;
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&b[24..56]);
    Some(Anchor { seq: crate::segment::format::le_u64(b, 8), log_len: crate::segment::format::le_u64(b, 16), hash })
}

/// Reads the anchor in `key_dir`: `Ok(None)` when there is no anchor file; the newer valid slot
/// otherwise; an error when the file exists but neither slot is valid.
pub(crate) fn read_anchor(vfs: &Arc<dyn Vfs>, key_dir: &Path) -> Result<Option<Anchor>> {
    let path = key_dir.join(ANCHOR_FILE);
    if !vfs.exists(&path) {
        return Ok(None);
    }
    let f = vfs.open(&path).map_err(|e| Error::io("open audit anchor", &path, e))?;
    let mut b = [0u8; 2 * ANCHOR_SLOT_BYTES];
    let n = read_up_to(f.as_ref(), &mut b, 0).map_err(|e| Error::io("read audit anchor", &path, e))?;
    let slot = |i: usize| b.get(i * ANCHOR_SLOT_BYTES..((i + 1) * ANCHOR_SLOT_BYTES).min(n)).unwrap_or_default();
    let slots = [decode_anchor(slot(0)), decode_anchor(slot(1))];
    if let Some(a) = slots.iter().flatten().max_by_key(|a| a.seq) {
        return Ok(Some(*a));
    }
    if n == b.len() && (slot(0).iter().all(|&x| x == 0) || slot(1).iter().all(|&x| x == 0)) {
        // Created before the first entry, and at most the first slot write torn by a crash:
        // nothing anchored yet (the log may hold that one entry).
        return Ok(Some(Anchor { seq: 0, log_len: 0, hash: [0; 32] }));
    }
    Err(Error::Corrupt { path, offset: Some(0), detail: "audit anchor: neither slot is valid (damaged or overwritten)".into() })
}

/// The anchor file, open for its in-place slot writes.
struct AnchorFile {
    path: PathBuf,
    file: Arc<dyn crate::io::VfsFile>,
}

impl AnchorFile {
    fn open(vfs: &Arc<dyn Vfs>, key_dir: &Path) -> Result<AnchorFile> {
        let path = key_dir.join(ANCHOR_FILE);
        if !vfs.exists(&path) {
            // Created whole (two empty slots) before the first entry is anchored.
            crate::io::write_file_atomic(vfs.as_ref(), key_dir, &path, &[0u8; 2 * ANCHOR_SLOT_BYTES])
                .map_err(|e| Error::io("create audit anchor", &path, e))?;
        }
        let file = vfs.open(&path).map_err(|e| Error::io("open audit anchor", &path, e))?;
        Ok(AnchorFile { path, file })
    }

    /// Writes `a` into its slot (by the parity of its seq) and fsyncs; the other slot keeps
    /// the previous anchor through a torn write.
    fn store(&self, a: &Anchor) -> Result<()> {
        let off = (a.seq % 2) * ANCHOR_SLOT_BYTES as u64;
        self.file.write_at(&encode_anchor(a), off).map_err(|e| Error::io("write audit anchor", &self.path, e))?;
        self.file.sync_data().map_err(|e| Error::fsync("fsync audit anchor", &self.path, e))
    }
}

/// What opening the audit log found that the log itself must record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenFindings {
    /// A torn final write that was cut (its bytes kept beside the log).
    pub torn: Option<crate::log::TornTail>,
}

impl AuditLog {
    /// Opens the audit log in `dir`, checked against the anchor in `key_dir`. A log the anchor
    /// says acknowledged entries must be there. Refuses (and changes
    /// nothing) when the log is missing, shorter than what was acknowledged, holds a different
    /// entry where the anchor's is, or is damaged anywhere but in a torn final write
    /// (SECURITY.md "Audit log: tamper model").
    pub(crate) fn open(vfs: &Arc<dyn Vfs>, dir: &Path, key_dir: &Path, signer: SigningKey) -> Result<(AuditLog, OpenFindings)> {
        let path = dir.join(FILE_NAME);
        let anchor = read_anchor(vfs, key_dir)?;
        if anchor.is_some_and(|a| a.seq > 0) && !vfs.exists(&path) {
            return Err(Error::Corrupt {
                path: path.clone(),
                offset: None,
                detail: match anchor {
                    Some(a) => format!(
                        "the audit log is missing, but the anchor in {} records entry {} ({} bytes): it was deleted or moved; restore it",
                        key_dir.display(),
                        a.seq,
                        a.log_len
                    ),
                    None => "the audit log is missing".into(),
                },
            });
        }
        let mut next_seq = 1;
        let mut head = [0u8; 32];
        let mut anchored_hash = None;
        let log = RecordLog::open(
            vfs,
            dir,
            FILE_NAME,
            MAGIC,
            32 + ENTRY_BYTES_MAX,
            Access::Write { keep_torn: true },
            anchor.map_or(0, |a| a.log_len),
            |_, _, payload| {
                // Framing only; the chain is checked by verify, so a tampered entry whose frame
                // is whole still opens and its damage is reported where it is.
                if payload.len() >= 32 {
                    head.copy_from_slice(&payload[..32]);
                    if anchor.is_some_and(|a| a.seq == next_seq) {
                        anchored_hash = Some(head);
                    }
                    next_seq += 1;
                }
                Ok(())
            },
        )?;
        let entries = next_seq - 1;
        match anchor {
            Some(a) if a.seq > entries || (a.seq > 0 && anchored_hash != Some(a.hash)) => {
                return Err(Error::Corrupt {
                    path,
                    offset: None,
                    detail: format!(
                        "the anchor in {} records entry {} with hash {}, but the log holds {entries} entries{}: it was truncated, rolled back or replaced",
                        key_dir.display(),
                        a.seq,
                        hex(&a.hash),
                        if a.seq <= entries { " and another entry in that place" } else { "" }
                    ),
                });
            }
            // Each append fsyncs the log, then the anchor, before the next begins: a crash
            // loses at most the last anchor write, so the log is at most one entry ahead.
            Some(a) if entries > a.seq + 1 => {
                return Err(Error::Corrupt {
                    path: key_dir.join(ANCHOR_FILE),
                    offset: None,
                    detail: format!(
                        "the anchor records entry {} but the log holds {entries} entries: the anchor was rolled back or overwritten (a key directory restored from an older copy?)",
                        a.seq
                    ),
                });
            }
            None if entries > 0 => {
                return Err(Error::Corrupt {
                    path: key_dir.join(ANCHOR_FILE),
                    offset: None,
                    detail: format!(
                        "the audit log holds {entries} entries but its anchor is missing: it was deleted; restore the key directory"
                    ),
                });
            }
            _ => {}
        }
        let anchor_file = AnchorFile::open(vfs, key_dir)?;
        let findings = OpenFindings { torn: log.torn().cloned() };
        Ok((AuditLog { path, log, next_seq, head, signer, anchor: anchor_file, poisoned: None }, findings))
    }

    /// Appends an entry (and a signed checkpoint when one is due); fsynced before returning.
    pub(crate) fn append(&mut self, at_us: i64, record: AuditRecord) -> Result<AuditEntry> {
        for (what, s) in [
            ("audit actor bytes", &record.actor),
            ("audit action bytes", &record.action),
            ("purpose bytes", &record.purpose),
            ("requester bytes", &record.requester),
            ("approval reference bytes", &record.approval_ref),
            ("justification bytes", &record.justification),
        ] {
            check_text(what, s)?;
        }
        if record.actor.is_empty() || record.action.is_empty() {
            return Err(Error::InvalidArgument("an audit entry needs an actor and an action".into()));
        }
        let entry = self.push(at_us, record)?;
        if entry.seq.is_multiple_of(CHECKPOINT_EVERY) {
            self.checkpoint(at_us)?;
        }
        Ok(entry)
    }

    /// A signed checkpoint over the current head.
    pub(crate) fn checkpoint(&mut self, at_us: i64) -> Result<AuditEntry> {
        let head_hex = hex(&self.head);
        let sig = sign_hex(&self.signer, &self.head);
        let record = AuditRecord {
            actor: "system".into(),
            action: CHECKPOINT_ACTION.into(),
            detail: serde_json::json!({
                "signed_hash": head_hex,
                "signature": sig,
                "public_key": hex(self.signer.verifying_key().as_bytes()),
            }),
            ..AuditRecord::default()
        };
        self.push(at_us, record)
    }

    fn push(&mut self, at_us: i64, record: AuditRecord) -> Result<AuditEntry> {
        if let Some(p) = &self.poisoned {
            return Err(Error::Poisoned(p.clone()));
        }
        let entry = AuditEntry { seq: self.next_seq, at_us, record, prev_hash: hex(&self.head) };
        let body = serde_json::to_vec(&entry).map_err(|e| Error::InvalidArgument(format!("audit entry does not encode: {e}")))?;
        if body.len() > ENTRY_BYTES_MAX {
            return Err(Error::LimitExceeded { what: "audit entry bytes", actual: body.len() as u64, max: ENTRY_BYTES_MAX as u64 });
        }
        let hash = chain(&self.head, &body);
        let mut payload = Vec::with_capacity(32 + body.len());
        payload.extend_from_slice(&hash);
        payload.extend_from_slice(&body);
        self.log.append(RECORD_TYPE, payload)?;
        self.head = hash;
        self.next_seq += 1;
        // After the log's fsync: an anchor is never ahead of what the log holds durably.
        if let Err(e) = self.anchor.store(&Anchor { seq: entry.seq, log_len: self.log.len(), hash }) {
            // Never retried and trusted: later appends fail until the store is reopened (which
            // checks the log against whatever anchor reached the disk).
            self.poisoned = Some(format!("audit anchor write failed: {e}"));
            return Err(e);
        }
        Ok(entry)
    }

    pub(crate) fn signer(&self) -> &SigningKey {
        &self.signer
    }

    pub(crate) fn public_key_hex(&self) -> String {
        hex(self.signer.verifying_key().as_bytes())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every record of an audit log file: `(offset, payload)` or the first framing problem.
fn scan(vfs: &Arc<dyn Vfs>, path: &Path, mut each: impl FnMut(u64, &[u8]) -> bool) -> Result<Option<(u64, String)>> {
    let file = vfs.open(path).map_err(|e| Error::io("open audit log", path, e))?;
    let len = file.len().map_err(|e| Error::io("stat audit log", path, e))?;
    let mut hdr = [0u8; HEADER_LEN];
    if read_up_to(file.as_ref(), &mut hdr, 0).map_err(|e| Error::io("read audit log", path, e))? != HEADER_LEN
        || &hdr[..8] != MAGIC
        || crc32fast::hash(&hdr[..HEADER_LEN - 4]) != le_u32(&hdr, HEADER_LEN - 4)
    {
        return Ok(Some((0, "audit log header is damaged".into())));
    }
    let mut pos = HEADER_LEN as u64;
    let mut frame = [0u8; FRAME_LEN];
    while pos < len {
        if read_up_to(file.as_ref(), &mut frame, pos).map_err(|e| Error::io("read audit log", path, e))? != FRAME_LEN {
            return Ok(Some((pos, "record header cut short".into())));
        }
        let plen = le_u32(&frame, 4) as usize;
        if plen > 32 + ENTRY_BYTES_MAX || pos + (FRAME_LEN + plen) as u64 > len {
            return Ok(Some((pos, format!("record length {plen} is impossible here"))));
        }
        let mut rec = vec![0u8; FRAME_LEN + plen];
        read_up_to(file.as_ref(), &mut rec, pos).map_err(|e| Error::io("read audit log", path, e))?;
        if crc32fast::hash(&rec[4..]) != le_u32(&rec, 0) || rec[8] != RECORD_TYPE {
            return Ok(Some((pos, "record fails its CRC (edited or damaged)".into())));
        }
        if !each(pos, &rec[FRAME_LEN..]) {
            return Ok(None);
        }
        pos += rec.len() as u64;
    }
    Ok(None)
}

/// Verifies the chain and the checkpoint signatures of the audit log at `path` against
/// `public_key_hex`. Works on a copy of the file, offline.
pub fn verify_file(vfs: &Arc<dyn Vfs>, path: &Path, public_key_hex: &str) -> Result<AuditVerification> {
    let mut prev = [0u8; 32];
    let mut entries = 0u64;
    let mut checkpoints = 0u64;
    let mut problem: Option<(u64, Option<u64>, String)> = None;
    let framing = scan(vfs, path, |pos, payload| {
        let fail = |seq: Option<u64>, what: String| Some((pos, seq, what));
        if payload.len() < 32 {
            problem = fail(None, "entry shorter than its hash".into());
            return false;
        }
        let body = &payload[32..];
        let entry: AuditEntry = match serde_json::from_slice(body) {
            Ok(e) => e,
            Err(e) => {
                problem = fail(None, format!("entry is not valid JSON: {e}"));
                return false;
            }
        };
        if entry.seq != entries + 1 {
            problem =
                fail(Some(entry.seq), format!("entry {} found where entry {} belongs (removed or reordered)", entry.seq, entries + 1));
            return false;
        }
        if entry.prev_hash != hex(&prev) {
            problem = fail(Some(entry.seq), "entry does not name the previous entry's hash (removed or reordered)".into());
            return false;
        }
        if chain(&prev, body) != payload[..32] {
            problem = fail(Some(entry.seq), "entry's hash does not match its contents (edited)".into());
            return false;
        }
        if entry.record.action == CHECKPOINT_ACTION {
            let d = &entry.record.detail;
            let signed = d.get("signed_hash").and_then(|v| v.as_str()).unwrap_or_default();
            let sig = d.get("signature").and_then(|v| v.as_str()).unwrap_or_default();
            if signed != hex(&prev) || !verify_hex(public_key_hex, &prev, sig) {
                problem = fail(Some(entry.seq), "checkpoint signature does not verify under the store's public key".into());
                return false;
            }
            checkpoints += 1;
        }
        prev.copy_from_slice(&payload[..32]);
        entries += 1;
        true
    })?;
    if problem.is_none() {
        problem = framing.map(|(pos, what)| (pos, Some(entries + 1), what));
    }
    Ok(AuditVerification { entries, checkpoints, problem, head_hash: hex(&prev) })
}

/// Entries of the audit log at `path` matching `q`.
pub(crate) fn query_file(vfs: &Arc<dyn Vfs>, path: &Path, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
    let mut out: Vec<AuditEntry> = Vec::new();
    let framing = scan(vfs, path, |_, payload| {
        let Some(body) = payload.get(32..) else { return false };
        let Ok(e) = serde_json::from_slice::<AuditEntry>(body) else { return false };
        let r = &e.record;
        let ok = q.from_us.is_none_or(|f| e.at_us >= f)
            && q.to_us.is_none_or(|t| e.at_us < t)
            && q.actor.as_ref().is_none_or(|a| &r.actor == a)
            && q.action.as_ref().is_none_or(|a| if a.ends_with('.') { r.action.starts_with(a.as_str()) } else { &r.action == a })
            && q.camera.as_ref().is_none_or(|c| r.cameras.contains(c));
        if ok {
            out.push(e);
            if let Some(limit) = q.limit {
                if out.len() > limit {
                    out.remove(0);
                }
            }
        }
        true
    })?;
    if let Some((pos, what)) = framing {
        return Err(Error::Corrupt { path: path.to_path_buf(), offset: Some(pos), detail: format!("audit log: {what}") });
    }
    Ok(out)
}
