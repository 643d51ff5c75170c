//! Retention sweeps, explicit erasure, legal holds, decommissioning and the audit API
//! (DURABILITY.md "Lifecycle and fsync order" and "Legal holds").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use serde::{Deserialize, Serialize};

use crate::audit::{verify_file, AuditEntry, AuditQuery, AuditRecord, AuditVerification};
use crate::catalog::CatalogRecord;
use crate::retention::{
    check_days, check_text, ControlRecord, ControlState, EraseIntent, EraseReceipt, ErasedSegment, Hold, HoldRelease, HoldRequest,
    ERASE_BATCH_SEGMENTS_MAX, HOLD_CAMERAS_MAX, US_PER_DAY,
};
use crate::segment::format::check_camera_id;
use crate::segment::writer::kfi_file_name;
use crate::signing::{hex, sign_hex, verify_hex};
use crate::store::index::{EntryState, IndexEntry};
use crate::store::{Inner, Store};
use crate::{Error, Result, SegmentId};

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// One receipt per erase batch.
    pub receipts: Vec<EraseReceipt>,
    /// Expired segments kept because a legal hold covers them.
    pub held_back: usize,
}

impl SweepReport {
    /// Segments erased by the sweep.
    pub fn erased(&self) -> usize {
        self.receipts.iter().map(|r| r.intent.segments.len()).sum()
    }
}

/// A signed record of a decommissioned volume (TN 11.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EraseCertificate {
    /// The certificate, as canonical JSON: what was destroyed, when, by whom.
    pub document: String,
    /// Hex Ed25519 signature of `document`'s bytes.
    pub signature: String,
    /// Hex Ed25519 public key of the store that signed.
    pub public_key: String,
}

impl EraseCertificate {
    /// Whether the signature verifies under `public_key_hex` (pass the key you trust, not the
    /// one inside the certificate, unless you only check integrity).
    pub fn verify(&self, public_key_hex: &str) -> bool {
        verify_hex(public_key_hex, self.document.as_bytes(), &self.signature)
    }
}

/// The erase rule of a decommission's intent.
const DECOMMISSION_RULE: &str = "decommission";
/// Name of the decommission marker, written into both the root and the key directory.
pub(crate) const DECOMMISSION_MARKER: &str = "decommissioned.json";

/// What the decommission markers hold: who started it, and the certificate once finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DecommissionMarker {
    pub store_id: String,
    pub erase_id: u64,
    pub actor: String,
    pub reason: String,
    pub started_us: i64,
    #[serde(default)]
    pub certificate: Option<EraseCertificate>,
}

impl DecommissionMarker {
    fn started(inner: &Inner, intent: &EraseIntent) -> DecommissionMarker {
        DecommissionMarker {
            store_id: inner.id.to_string(),
            erase_id: intent.erase_id,
            actor: intent.actor.clone(),
            reason: intent.reason.clone(),
            started_us: intent.at_us,
            certificate: None,
        }
    }

    /// What every later call is told.
    fn summary(&self) -> String {
        format!(
            "store {} was decommissioned by {:?} ({:?}) at {} us since the epoch; its keys are destroyed and it accepts no writes or reads of video; \
             the signed certificate is in {DECOMMISSION_MARKER} and in the audit log",
            self.store_id, self.actor, self.reason, self.started_us
        )
    }
}

fn write_decommission_marker(inner: &Inner, m: &DecommissionMarker) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(m).map_err(|e| Error::InvalidArgument(format!("decommission marker: {e}")))?;
    for dir in [&inner.config.key_dir, &inner.config.root] {
        let path = dir.join(DECOMMISSION_MARKER);
        crate::io::write_file_atomic(inner.vfs.as_ref(), dir, &path, &bytes)
            .map_err(|e| Error::io("write decommission marker", &path, e))?;
    }
    Ok(())
}

/// The decommission marker of the store at `root` / `key_dir`, if either holds one (the key
/// directory's wins: it is written first).
pub(crate) fn read_decommission_marker(
    vfs: &std::sync::Arc<dyn crate::io::Vfs>,
    root: &std::path::Path,
    key_dir: &std::path::Path,
) -> Result<Option<DecommissionMarker>> {
    let key_marker = key_dir.join(DECOMMISSION_MARKER);
    let root_marker = root.join(DECOMMISSION_MARKER);
    if !vfs.exists(&key_marker) {
        if vfs.exists(&root_marker) {
            // The key directory's marker is written first, so no crash leaves only the root's.
            return Err(Error::Corrupt {
                path: root_marker,
                offset: None,
                detail: format!("the root says the store was decommissioned but the key directory {} does not", key_dir.display()),
            });
        }
        return Ok(None);
    }
    {
        let path = key_marker;
        let f = vfs.open(&path).map_err(|e| Error::io("open decommission marker", &path, e))?;
        let len = f.len().map_err(|e| Error::io("stat decommission marker", &path, e))?;
        if len > crate::audit::ENTRY_BYTES_MAX as u64 * 16 {
            return Err(Error::Corrupt { path, offset: None, detail: format!("decommission marker of {len} bytes") });
        }
        let mut buf = vec![0u8; len as usize];
        crate::io::read_exact_at(f.as_ref(), &mut buf, 0).map_err(|e| Error::io("read decommission marker", &path, e))?;
        // A damaged marker refuses the open: neither writes nor a destroying finish.
        serde_json::from_slice(&buf).map(Some).map_err(|e| Error::Corrupt {
            path,
            offset: None,
            detail: format!("decommission marker does not parse: {e}"),
        })
    }
}

fn lock<'a, T>(m: &'a std::sync::Mutex<T>, what: &str) -> Result<MutexGuard<'a, T>> {
    m.lock().map_err(|_| Error::Poisoned(format!("{what} lock")))
}

impl Inner {
    pub(crate) fn audit_append(&self, record: AuditRecord) -> Result<AuditEntry> {
        lock(&self.audit, "audit")?.append(self.clock.now_us(), record)
    }

    /// Every sealed segment, with its camera, that is expired and not held, at most `limit`.
    /// Sorted by capture time, a camera's segments stop at the first captured after the
    /// cutoff; one captured before it may still have arrived after it, and is skipped.
    fn plan(&self, ctl: &ControlState, only: Option<&str>, limit: usize) -> Result<(Vec<ErasedSegment>, usize)> {
        let now = self.clock.now_us();
        let cams: Vec<(String, _)> =
            self.cameras.read().map(|c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
        let mut out = Vec::new();
        let mut held = 0;
        for (camera, idx) in cams {
            if only.is_some_and(|o| o != camera) {
                continue;
            }
            let cutoff = now.saturating_sub(i64::from(ctl.days(&camera)) * US_PER_DAY);
            let idx = lock(&idx, "index")?;
            for e in idx.segments.values() {
                if e.last_ts_us >= cutoff {
                    // Sorted by time: the rest of this camera is younger.
                    break;
                }
                if !expired(e, cutoff) {
                    continue;
                }
                if !ctl.holding(&camera, e.first_ts_us, e.last_ts_us).is_empty() {
                    held += 1;
                    continue;
                }
                out.push(ErasedSegment { segment: e.id.0, camera: camera.clone(), first_ts_us: e.first_ts_us, last_ts_us: e.last_ts_us });
                if out.len() >= limit {
                    return Ok((out, held));
                }
            }
        }
        Ok((out, held))
    }

    /// Makes an erasure durable as an intent, then drops its segments from the index: from
    /// here on nothing reads them and no hold can claim them.
    fn commit_intent(
        &self,
        ctl: &mut ControlState,
        rule: &str,
        actor: &str,
        reason: &str,
        segments: Vec<ErasedSegment>,
    ) -> Result<EraseIntent> {
        let intent = EraseIntent {
            erase_id: ctl.next_erase,
            rule: rule.into(),
            actor: actor.into(),
            at_us: self.clock.now_us(),
            segments,
            reason: reason.into(),
        };
        ctl.append(&ControlRecord::EraseIntent(intent.clone()))?;
        ctl.next_erase += 1;
        ctl.pending.insert(intent.erase_id, intent.clone());
        self.unindex(&intent.segments)?;
        Ok(intent)
    }

    pub(crate) fn unindex(&self, segments: &[ErasedSegment]) -> Result<()> {
        for s in segments {
            let idx = self.camera_index(&s.camera);
            let mut idx = lock(&idx, "index")?;
            if idx.segments.get(&s.first_ts_us).is_some_and(|e| e.id.0 == s.segment) {
                idx.segments.remove(&s.first_ts_us);
            }
        }
        Ok(())
    }

    /// Carries out an intent (idempotent, so recovery can run it again): rotate the key store
    /// without the segments' keys and destroy the old KEK; unlink the files; catalog Erased;
    /// audit receipt; control EraseDone.
    pub(crate) fn run_erase(&self, ctl: &mut ControlState, intent: &EraseIntent) -> Result<EraseReceipt> {
        let ids: BTreeSet<SegmentId> = intent.segments.iter().map(|s| SegmentId(s.segment)).collect();
        let rotation = lock(&self.keys, "key store")?
            .as_mut()
            .ok_or_else(|| Error::Decommissioned("the key store was destroyed".into()))?
            .rotate(&ids, self.clock.now_us())?;
        let mut dirs = BTreeSet::new();
        for s in &intent.segments {
            self.unlink_segment_files(s)?;
            dirs.insert(self.seg_root().join(&s.camera));
        }
        for d in dirs {
            if self.vfs.exists(&d) {
                self.vfs.sync_dir(&d).map_err(|e| Error::io("fsync camera directory", &d, e))?;
            }
        }
        let recs: Vec<CatalogRecord> = ids.iter().map(|&segment| CatalogRecord::Erased { segment }).collect();
        lock(&self.catalog, "catalog")?.append_many(&recs)?;
        let receipt = EraseReceipt {
            intent: intent.clone(),
            keys_destroyed: rotation.removed.iter().map(|s| s.0).collect(),
            kek_destroyed: rotation.destroyed_kek.0,
            key_generations: rotation.generations,
            completed_us: self.clock.now_us(),
        };
        let cameras: BTreeSet<String> = intent.segments.iter().map(|s| s.camera.clone()).collect();
        self.audit_append(AuditRecord {
            actor: intent.actor.clone(),
            action: "erase".into(),
            cameras: cameras.into_iter().collect(),
            from_us: intent.segments.iter().map(|s| s.first_ts_us).min(),
            to_us: intent.segments.iter().map(|s| s.last_ts_us).max(),
            justification: intent.rule.clone(),
            detail: serde_json::to_value(&receipt).unwrap_or_default(),
            ..AuditRecord::default()
        })?;
        ctl.append(&ControlRecord::EraseDone { erase_id: intent.erase_id, at_us: receipt.completed_us })?;
        ctl.pending.remove(&intent.erase_id);
        self.metrics.segments_erased.fetch_add(intent.segments.len() as u64, Ordering::Relaxed);
        tracing::info!(erase_id = intent.erase_id, rule = %intent.rule, segments = intent.segments.len(), kek = rotation.destroyed_kek.0, "crypto-erase complete");
        Ok(receipt)
    }

    /// Unlinks an erased segment's file and sidecar (either may be gone already).
    fn unlink_segment_files(&self, s: &ErasedSegment) -> Result<()> {
        let seg = self.segment_path(&s.camera, SegmentId(s.segment));
        let kfi = self.seg_root().join(&s.camera).join(kfi_file_name(SegmentId(s.segment)));
        for p in [seg, kfi] {
            if self.vfs.exists(&p) {
                self.vfs.remove_file(&p).map_err(|e| Error::io("unlink erased segment", &p, e))?;
            }
        }
        Ok(())
    }

    /// At open: erasures decided before a crash are finished before anything else.
    pub(crate) fn resume_erasures(&self) -> Result<()> {
        let mut ctl = lock(&self.control, "control")?;
        let pending: Vec<EraseIntent> = ctl.pending.values().cloned().collect();
        for intent in pending {
            if intent.rule == DECOMMISSION_RULE {
                // A decommission whose marker was written is finished before this (the store
                // opens decommissioned). Without a marker it was never decided: every key is
                // whole, and the store may have taken video and holds since. Abandoned.
                tracing::warn!(erase_id = intent.erase_id, "abandoning a decommission that never reached its marker");
                ctl.append(&ControlRecord::EraseDone { erase_id: intent.erase_id, at_us: self.clock.now_us() })?;
                ctl.pending.remove(&intent.erase_id);
                continue;
            }
            tracing::warn!(erase_id = intent.erase_id, "finishing an erasure interrupted by a crash");
            self.unindex(&intent.segments)?;
            self.run_erase(&mut ctl, &intent)?;
        }
        Ok(())
    }

    /// At open of a decommissioned store: finishes a decommission a crash interrupted, then
    /// refuses everything but the audit log from here on.
    pub(crate) fn open_decommissioned(&self, marker: DecommissionMarker) -> Result<()> {
        let marker = if marker.certificate.is_none() {
            let mut ctl = lock(&self.control, "control")?;
            // Keys are destroyed only for a decommission the control log decided: a marker
            // alone (written by anyone who can write the key directory) destroys nothing.
            let Some(intent) = ctl.pending.get(&marker.erase_id).filter(|i| i.rule == DECOMMISSION_RULE).cloned() else {
                return Err(Error::Corrupt {
                    path: self.config.key_dir.join(DECOMMISSION_MARKER),
                    offset: None,
                    detail: format!(
                        "the marker says decommission {} started, but the control log holds no such pending decommission: nothing is destroyed; \
                         restore the store's directories or remove a marker placed by mistake",
                        marker.erase_id
                    ),
                });
            };
            tracing::warn!(erase_id = intent.erase_id, "finishing a decommission interrupted by a crash");
            self.finish_decommission(&mut ctl, &intent)?
        } else {
            marker
        };
        *lock(&self.decommissioned, "decommission state")? = Some(marker.summary());
        Ok(())
    }

    /// The destructive half of a decommission (idempotent): every KEK of this store destroyed,
    /// the key store removed, every segment file unlinked, catalog Erased, the certificate
    /// signed, audited and written into the markers, control EraseDone.
    fn finish_decommission(&self, ctl: &mut ControlState, intent: &EraseIntent) -> Result<DecommissionMarker> {
        let generation = {
            let mut keys = lock(&self.keys, "key store")?;
            match keys.take() {
                Some(mut ks) => {
                    let g = ks.generation();
                    let kek = ks.destroy_all()?;
                    Some((g, kek))
                }
                None => None,
            }
        };
        // The current generation's KEK first, then whatever else this store's provider still
        // holds (a crash between steps, a rotation's spare KEK): the provider is bound to this
        // store, so these are its own.
        let mut destroyed: Vec<u64> = generation.iter().map(|(_, k)| k.0).collect();
        let generation = generation.map(|(g, _)| g);
        for k in self.kek.list_keks()? {
            self.kek.destroy_kek(k)?;
            destroyed.push(k.0);
        }
        let key_dir = &self.config.key_dir;
        let names = self.vfs.list_dir(key_dir).map_err(|e| Error::io("list key directory", key_dir, e))?;
        for n in names.iter().filter(|n| n.starts_with("keystore-")) {
            let p = key_dir.join(n);
            self.vfs.remove_file(&p).map_err(|e| Error::io("remove key store", &p, e))?;
        }
        self.vfs.sync_dir(key_dir).map_err(|e| Error::io("fsync key directory", key_dir, e))?;
        for s in &intent.segments {
            self.unlink_segment_files(s)?;
        }
        let recs: Vec<CatalogRecord> = intent.segments.iter().map(|s| CatalogRecord::Erased { segment: SegmentId(s.segment) }).collect();
        lock(&self.catalog, "catalog")?.append_many(&recs)?;
        let document = serde_json::json!({
            "type": "camvault-erase-certificate",
            "version": 2,
            "store_id": self.id.to_string(),
            "volume": self.config.root.display().to_string(),
            "key_dir": self.config.key_dir.display().to_string(),
            "started_us": intent.at_us,
            "completed_us": self.clock.now_us(),
            "actor": intent.actor,
            "reason": intent.reason,
            "method": "cryptographic erase (NIST SP 800-88): KEKs destroyed, data keys unrecoverable, key store and segment files removed",
            "keks_destroyed": destroyed,
            "key_store_generation": generation,
            "segment_count": intent.segments.len(),
            "segments": intent.segments,
        })
        .to_string();
        let signer = lock(&self.audit, "audit")?.signer().clone();
        let cert = EraseCertificate {
            signature: sign_hex(&signer, document.as_bytes()),
            public_key: hex(signer.verifying_key().as_bytes()),
            document,
        };
        // The certificate lists every segment and may outgrow an audit entry: the entry names
        // it by digest and signature; the whole certificate is in the markers.
        self.audit_append(AuditRecord {
            actor: intent.actor.clone(),
            action: "decommission".into(),
            detail: serde_json::json!({
                "certificate_sha256": hex(&<sha2::Sha256 as sha2::Digest>::digest(cert.document.as_bytes())),
                "signature": cert.signature,
                "public_key": cert.public_key,
                "segment_count": intent.segments.len(),
                "keks_destroyed": destroyed,
                "certificate_in": DECOMMISSION_MARKER,
            }),
            ..AuditRecord::default()
        })?;
        let mut marker = DecommissionMarker::started(self, intent);
        marker.certificate = Some(cert);
        write_decommission_marker(self, &marker)?;
        ctl.append(&ControlRecord::EraseDone { erase_id: intent.erase_id, at_us: self.clock.now_us() })?;
        ctl.pending.remove(&intent.erase_id);
        Ok(marker)
    }

    pub(crate) fn sweep(&self, only: Option<&str>, actor: &str) -> Result<SweepReport> {
        let mut ctl = lock(&self.control, "control")?;
        let mut report = SweepReport::default();
        loop {
            let (batch, held) = self.plan(&ctl, only, ERASE_BATCH_SEGMENTS_MAX)?;
            report.held_back = report.held_back.max(held);
            if batch.is_empty() {
                return Ok(report);
            }
            let intent = self.commit_intent(&mut ctl, "retention", actor, "", batch)?;
            report.receipts.push(self.run_erase(&mut ctl, &intent)?);
        }
    }
}

impl Store {
    /// Runs a retention sweep now: every sealed segment whose newest frame is older than its
    /// camera's retention, and that no hold covers, is crypto-erased. Idempotent.
    pub fn sweep(&self) -> Result<SweepReport> {
        self.inner.check_live()?;
        self.inner.sweep(None, "system")
    }

    /// Sweeps one camera now, on an operator's request (same rules: expired and unheld only).
    pub fn sweep_camera(&self, camera: &str, actor: &str) -> Result<SweepReport> {
        self.inner.check_live()?;
        check_camera_id(camera)?;
        check_text("actor", actor, true)?;
        self.inner.sweep(Some(camera), actor)
    }

    /// Erases the given segments now. Refused, erasing nothing, if any of them is unknown,
    /// still being written, unexpired or held.
    pub fn erase_segments(&self, segments: &[SegmentId], actor: &str, reason: &str) -> Result<EraseReceipt> {
        self.inner.check_live()?;
        check_text("actor", actor, true)?;
        check_text("reason", reason, true)?;
        let mut ctl = lock(&self.inner.control, "control")?;
        let now = self.inner.clock.now_us();
        let mut chosen = Vec::new();
        let mut refusals = Vec::new();
        let cams: Vec<(String, _)> =
            self.inner.cameras.read().map(|c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
        let wanted: BTreeSet<SegmentId> = segments.iter().copied().collect();
        let mut found = BTreeSet::new();
        for (camera, idx) in cams {
            let cutoff = now.saturating_sub(i64::from(ctl.days(&camera)) * US_PER_DAY);
            let idx = lock(&idx, "index")?;
            for e in idx.segments.values().filter(|e| wanted.contains(&e.id)) {
                found.insert(e.id);
                let holds = ctl.holding(&camera, e.first_ts_us, e.last_ts_us);
                if !holds.is_empty() {
                    refusals.push(format!("segment {} is under legal hold {holds:?}", e.id.0));
                } else if !matches!(e.state, EntryState::Sealed(_)) {
                    refusals.push(format!("segment {} is still being written", e.id.0));
                } else if !expired(e, cutoff) {
                    refusals.push(format!(
                        "segment {} of {camera} is unexpired (retention {} days from its capture and from its arrival)",
                        e.id.0,
                        ctl.days(&camera)
                    ));
                } else {
                    chosen.push(ErasedSegment {
                        segment: e.id.0,
                        camera: camera.clone(),
                        first_ts_us: e.first_ts_us,
                        last_ts_us: e.last_ts_us,
                    });
                }
            }
        }
        for s in wanted.difference(&found) {
            refusals.push(format!("segment {} is not stored", s.0));
        }
        if !refusals.is_empty() {
            return Err(Error::FailedPrecondition(format!("nothing erased: {}", refusals.join("; "))));
        }
        if chosen.len() > ERASE_BATCH_SEGMENTS_MAX {
            return Err(Error::LimitExceeded {
                what: "segments per erase",
                actual: chosen.len() as u64,
                max: ERASE_BATCH_SEGMENTS_MAX as u64,
            });
        }
        let mut intent = self.inner.commit_intent(&mut ctl, "explicit", actor, reason, chosen)?;
        intent.rule = format!("explicit: {reason}");
        self.inner.run_erase(&mut ctl, &intent)
    }

    /// Sets `camera`'s retention in days. Below the 30-day floor is refused
    /// (`FailedPrecondition`); audited.
    pub fn set_retention(&self, camera: &str, days: u32, actor: &str, reason: &str) -> Result<()> {
        self.inner.check_live()?;
        check_camera_id(camera)?;
        check_days(days)?;
        check_text("actor", actor, true)?;
        check_text("reason", reason, false)?;
        let mut ctl = lock(&self.inner.control, "control")?;
        let before = ctl.days(camera);
        let at_us = self.inner.clock.now_us();
        ctl.append(&ControlRecord::RetentionSet { camera: camera.into(), days, actor: actor.into(), reason: reason.into(), at_us })?;
        ctl.per_camera.insert(camera.into(), days);
        drop(ctl);
        self.inner.audit_append(AuditRecord {
            actor: actor.into(),
            action: "retention.set".into(),
            cameras: vec![camera.into()],
            detail: serde_json::json!({ "days": days, "previous_days": before, "reason": reason }),
            ..AuditRecord::default()
        })?;
        Ok(())
    }

    /// `camera`'s retention in days.
    pub fn retention_days(&self, camera: &str) -> Result<u32> {
        Ok(lock(&self.inner.control, "control")?.days(camera))
    }

    /// The default retention and the per-camera overrides.
    pub fn retention_policy(&self) -> Result<(u32, BTreeMap<String, u32>)> {
        let ctl = lock(&self.inner.control, "control")?;
        Ok((ctl.default_days, ctl.per_camera.iter().map(|(k, v)| (k.clone(), *v)).collect()))
    }

    /// Places a legal hold. Once this returns the hold is durable and nothing it covers can be
    /// erased; the hold lists the spans it actually protects (video erased before it was placed
    /// is not among them).
    pub fn place_hold(&self, request: HoldRequest) -> Result<Hold> {
        self.inner.check_live()?;
        check_text("case reference", &request.case_ref, true)?;
        check_text("placed_by", &request.placed_by, true)?;
        check_text("reason", &request.reason, true)?;
        if request.cameras.is_empty() || request.cameras.len() > HOLD_CAMERAS_MAX {
            return Err(Error::InvalidArgument(format!("a hold names 1..={HOLD_CAMERAS_MAX} cameras")));
        }
        for c in &request.cameras {
            check_camera_id(c)?;
        }
        if request.from_us >= request.to_us {
            return Err(Error::InvalidArgument("a hold's range must end after it starts".into()));
        }
        // Under the control lock: no sweep can pick segments between computing the protected
        // spans and the hold becoming durable.
        let mut ctl = lock(&self.inner.control, "control")?;
        let mut protected = BTreeMap::new();
        for c in &request.cameras {
            let spans = self.recordings(c, request.from_us, request.to_us)?.spans;
            protected.insert(c.clone(), spans);
        }
        let hold = Hold { id: ctl.next_hold, request, placed_us: self.inner.clock.now_us(), protected, released: None };
        ctl.append(&ControlRecord::HoldPlaced(hold.clone()))?;
        ctl.next_hold += 1;
        ctl.holds.insert(hold.id, hold.clone());
        drop(ctl);
        self.inner.audit_append(AuditRecord {
            actor: hold.request.placed_by.clone(),
            action: "hold.place".into(),
            cameras: hold.request.cameras.clone(),
            from_us: Some(hold.request.from_us),
            to_us: Some(hold.request.to_us),
            detail: serde_json::json!({ "hold_id": hold.id, "case_ref": hold.request.case_ref, "reason": hold.request.reason, "protected": hold.protected }),
            ..AuditRecord::default()
        })?;
        Ok(hold)
    }

    /// Releases a hold (who and why are recorded); the next sweep may erase what it pinned.
    pub fn release_hold(&self, id: u64, by: &str, reason: &str) -> Result<Hold> {
        self.inner.check_live()?;
        check_text("released_by", by, true)?;
        check_text("reason", reason, true)?;
        let mut ctl = lock(&self.inner.control, "control")?;
        let Some(h) = ctl.holds.get(&id) else { return Err(Error::NotFound(format!("no hold {id}"))) };
        if h.released.is_some() {
            return Err(Error::FailedPrecondition(format!("hold {id} is already released")));
        }
        let release = HoldRelease { by: by.into(), reason: reason.into(), at_us: self.inner.clock.now_us() };
        ctl.append(&ControlRecord::HoldReleased { id, release: release.clone() })?;
        let hold = match ctl.holds.get_mut(&id) {
            Some(h) => {
                h.released = Some(release);
                h.clone()
            }
            None => return Err(Error::NotFound(format!("no hold {id}"))),
        };
        drop(ctl);
        self.inner.audit_append(AuditRecord {
            actor: by.into(),
            action: "hold.release".into(),
            cameras: hold.request.cameras.clone(),
            from_us: Some(hold.request.from_us),
            to_us: Some(hold.request.to_us),
            detail: serde_json::json!({ "hold_id": id, "case_ref": hold.request.case_ref, "reason": reason }),
            ..AuditRecord::default()
        })?;
        Ok(hold)
    }

    /// Holds, released ones included when asked.
    pub fn holds(&self, include_released: bool) -> Result<Vec<Hold>> {
        let ctl = lock(&self.inner.control, "control")?;
        Ok(ctl.holds.values().filter(|h| include_released || h.released.is_none()).cloned().collect())
    }

    /// Decommissions the volume (TN 11.4): destroys every data key (by destroying the KEK),
    /// removes every segment and returns a signed erase certificate. Refused while any hold is
    /// in force, any stream is open, or any video is unexpired.
    pub fn decommission(&self, actor: &str, reason: &str) -> Result<EraseCertificate> {
        self.inner.check_live()?;
        check_text("actor", actor, true)?;
        check_text("reason", reason, true)?;
        let mut ctl = lock(&self.inner.control, "control")?;
        let active: Vec<String> =
            ctl.holds.values().filter(|h| h.released.is_none()).map(|h| format!("{} ({})", h.id, h.request.case_ref)).collect();
        if !active.is_empty() {
            return Err(Error::FailedPrecondition(format!("decommission refused: legal holds in force: {}", active.join(", "))));
        }
        let open = self.inner.streams.lock().map(|s| s.values().filter(|w| w.strong_count() > 0).count()).unwrap_or(0);
        if open > 0 {
            return Err(Error::FailedPrecondition(format!("decommission refused: {open} streams are open")));
        }
        let now = self.inner.clock.now_us();
        let cams: Vec<(String, _)> =
            self.inner.cameras.read().map(|c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
        let mut all = Vec::new();
        let mut unexpired = 0usize;
        for (camera, idx) in cams {
            let cutoff = now.saturating_sub(i64::from(ctl.days(&camera)) * US_PER_DAY);
            for e in lock(&idx, "index")?.segments.values() {
                if !expired(e, cutoff) {
                    unexpired += 1;
                }
                all.push(ErasedSegment { segment: e.id.0, camera: camera.clone(), first_ts_us: e.first_ts_us, last_ts_us: e.last_ts_us });
            }
        }
        if unexpired > 0 {
            return Err(Error::FailedPrecondition(format!(
                "decommission refused: {unexpired} segments are unexpired; nothing unexpired is ever deleted (move or let them expire first)"
            )));
        }
        // The intent, without unindexing yet: until the marker is written the decommission is
        // not decided, and a failure here leaves the store whole and live.
        let intent = EraseIntent {
            erase_id: ctl.next_erase,
            rule: DECOMMISSION_RULE.into(),
            actor: actor.into(),
            at_us: self.inner.clock.now_us(),
            segments: all,
            reason: reason.into(),
        };
        ctl.append(&ControlRecord::EraseIntent(intent.clone()))?;
        ctl.next_erase += 1;
        ctl.pending.insert(intent.erase_id, intent.clone());
        // The marker is the commit point (DURABILITY.md "Lifecycle and fsync order"): from here on no
        // open of this store creates a key store or accepts a write, whatever happens next.
        if let Err(e) = write_decommission_marker(&self.inner, &DecommissionMarker::started(&self.inner, &intent)) {
            // Not decided: abandon the intent (an open would abandon it too).
            if ctl.append(&ControlRecord::EraseDone { erase_id: intent.erase_id, at_us: self.inner.clock.now_us() }).is_ok() {
                ctl.pending.remove(&intent.erase_id);
            }
            return Err(e);
        }
        *lock(&self.inner.decommissioned, "decommission state")? =
            Some(format!("store {} is being decommissioned by {actor:?} ({reason:?})", self.inner.id));
        self.inner.unindex(&intent.segments)?;
        let marker = self.inner.finish_decommission(&mut ctl, &intent)?;
        *lock(&self.inner.decommissioned, "decommission state")? = Some(marker.summary());
        marker.certificate.ok_or_else(|| Error::Decommissioned("the certificate was not written".into()))
    }

    /// The decommission certificate, once the store is decommissioned.
    pub fn decommission_certificate(&self) -> Result<Option<EraseCertificate>> {
        Ok(read_decommission_marker(&self.inner.vfs, &self.inner.config.root, &self.inner.config.key_dir)?.and_then(|m| m.certificate))
    }

    /// Records an entry in the audit log (logins, video reads and exports, changes); fsynced
    /// before returning.
    pub fn audit(&self, record: AuditRecord) -> Result<AuditEntry> {
        self.inner.audit_append(record)
    }

    /// Entries matching `query`, oldest first.
    pub fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let path = lock(&self.inner.audit, "audit")?.path().to_path_buf();
        crate::audit::query_file(&self.inner.vfs, &path, query)
    }

    /// Checks the whole audit chain and every checkpoint signature; says where the first
    /// problem is.
    pub fn verify_audit(&self) -> Result<AuditVerification> {
        let (path, pk) = {
            let a = lock(&self.inner.audit, "audit")?;
            (a.path().to_path_buf(), a.public_key_hex())
        };
        verify_file(&self.inner.vfs, &path, &pk)
    }

    /// Appends a signed audit checkpoint now.
    pub fn audit_checkpoint(&self) -> Result<AuditEntry> {
        lock(&self.inner.audit, "audit")?.checkpoint(self.inner.clock.now_us())
    }

    /// Signs `message` with the store's Ed25519 key (export manifests); returns the hex
    /// signature and the hex public key that verifies it.
    pub fn sign(&self, message: &[u8]) -> Result<(String, String)> {
        let a = lock(&self.inner.audit, "audit")?;
        Ok((sign_hex(a.signer(), message), a.public_key_hex()))
    }

    /// Hex Ed25519 public key that verifies audit checkpoints and erase certificates.
    pub fn signing_public_key(&self) -> Result<String> {
        Ok(lock(&self.inner.audit, "audit")?.public_key_hex())
    }
}

/// Whether `e` has outlived a retention whose cutoff is `cutoff_us` (now minus the camera's
/// retention): sealed, captured before the cutoff, and arrived before it. Capture times are
/// the camera's word; the seal time is the store's clock. A camera that stamps 1970 keeps its
/// video for the retention counted from when it arrived (DURABILITY.md "Capture time and arrival").
pub(crate) fn expired(e: &IndexEntry, cutoff_us: i64) -> bool {
    matches!(e.state, EntryState::Sealed(info) if e.last_ts_us < cutoff_us && info.sealed_us < cutoff_us)
}
