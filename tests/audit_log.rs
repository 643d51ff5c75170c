//! The audit log: any edited, removed or reordered byte is found by verify, which says where;
//! the chain survives a crash and a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use camvault_tests::{open_mem, test_config, T0_US};
use storage_core::audit::{AuditQuery, AuditRecord};
use storage_core::io::{CrashMode, MemVfs, Vfs};
use storage_core::Store;

const AUDIT: &str = "/data/audit/audit.log";

fn read(store: &Store, n: usize, who: &str) {
    for i in 0..n {
        store
            .audit(AuditRecord {
                actor: who.into(),
                action: "video.read".into(),
                cameras: vec![format!("cam-{}", i % 3)],
                from_us: Some(T0_US + i as i64),
                to_us: Some(T0_US + 1_000_000 + i as i64),
                purpose: "incident review".into(),
                requester: "traffic police".into(),
                approval_ref: format!("CV-{i}"),
                ..AuditRecord::default()
            })
            .expect("audit");
    }
}

/// Record boundaries `(offset, length)` of a record log file.
fn records(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 32;
    while pos + 9 <= bytes.len() {
        let len = 9 + u32::from_le_bytes([bytes[pos + 4], bytes[pos + 5], bytes[pos + 6], bytes[pos + 7]]) as usize;
        out.push((pos, len));
        pos += len;
    }
    out
}

fn rewrite(vfs: &MemVfs, path: &Path, bytes: &[u8]) {
    let f = vfs.open(path).expect("open");
    f.set_len(0).expect("truncate");
    f.write_at(bytes, 0).expect("write");
}

#[test]
fn every_edited_byte_is_detected() {
    let vfs = MemVfs::new();
    let store = open_mem(&vfs, test_config()).expect("open");
    read(&store, 12, "alice");
    store.audit_checkpoint().expect("checkpoint");
    read(&store, 3, "bob");
    let ok = store.verify_audit().expect("verify");
    assert_eq!(ok.problem, None);
    assert_eq!(ok.entries, 16);
    assert_eq!(ok.checkpoints, 1);
    let path = PathBuf::from(AUDIT);
    let original = vfs.contents(&path).expect("audit file");
    for i in 0..original.len() {
        let mut b = original.clone();
        b[i] ^= 0x01;
        rewrite(&vfs, &path, &b);
        let v = store.verify_audit().expect("verify");
        let (offset, _seq, what) = v.problem.unwrap_or_else(|| panic!("flipping byte {i} went unnoticed"));
        assert!(offset as usize <= i, "byte {i}: reported at {offset}: {what}");
    }
    rewrite(&vfs, &path, &original);
    assert_eq!(store.verify_audit().expect("verify").problem, None);
}

#[test]
fn removed_and_reordered_entries_are_detected_and_located() {
    let vfs = MemVfs::new();
    let store = open_mem(&vfs, test_config()).expect("open");
    read(&store, 10, "alice");
    let path = PathBuf::from(AUDIT);
    let original = vfs.contents(&path).expect("audit file");
    let recs = records(&original);
    assert_eq!(recs.len(), 10);
    // Remove entry 5 (seq 5).
    let (o, l) = recs[4];
    let mut cut = original.clone();
    cut.drain(o..o + l);
    rewrite(&vfs, &path, &cut);
    let v = store.verify_audit().expect("verify");
    let (offset, seq, what) = v.problem.expect("removal detected");
    assert_eq!((offset as usize, seq), (o, Some(6)), "{what}");
    assert_eq!(v.entries, 4);
    // Swap entries 3 and 4.
    let (o3, l3) = recs[2];
    let (o4, l4) = recs[3];
    let mut swapped = original[..o3].to_vec();
    swapped.extend_from_slice(&original[o4..o4 + l4]);
    swapped.extend_from_slice(&original[o3..o3 + l3]);
    swapped.extend_from_slice(&original[o4 + l4..]);
    rewrite(&vfs, &path, &swapped);
    let (offset, _, _) = store.verify_audit().expect("verify").problem.expect("reorder detected");
    assert_eq!(offset as usize, o3);
}

#[test]
fn a_rewritten_chain_fails_the_signed_checkpoint() {
    // An attacker who edits an entry and recomputes every later hash and CRC still cannot
    // forge the checkpoint signature.
    let vfs = MemVfs::new();
    let store = open_mem(&vfs, test_config()).expect("open");
    read(&store, 5, "alice");
    store.audit_checkpoint().expect("checkpoint");
    let path = PathBuf::from(AUDIT);
    let original = vfs.contents(&path).expect("audit file");
    let mut out = original[..32].to_vec();
    let mut prev = [0u8; 32];
    for (i, (o, l)) in records(&original).into_iter().enumerate() {
        let body = &original[o + 9 + 32..o + l];
        let mut body = String::from_utf8(body.to_vec()).expect("json");
        if i == 1 {
            body = body.replace("alice", "mallo");
        }
        let mut entry: serde_json::Value = serde_json::from_str(&body).expect("json");
        entry["prev_hash"] = serde_json::Value::String(prev.iter().map(|b| format!("{b:02x}")).collect());
        let body = serde_json::to_vec(&entry).expect("json");
        use sha2_like::hash;
        let h = hash(&prev, &body);
        let mut payload = h.to_vec();
        payload.extend_from_slice(&body);
        let mut rec = vec![0u8; 4];
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.push(1);
        rec.extend_from_slice(&payload);
        let crc = crc32(&rec[4..]);
        rec[..4].copy_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&rec);
        prev = h;
    }
    rewrite(&vfs, &path, &out);
    let (_, seq, what) = store.verify_audit().expect("verify").problem.expect("forgery detected");
    assert_eq!(seq, Some(6), "the checkpoint is entry 6: {what}");
    assert!(what.contains("signature"), "{what}");
}

/// The chain's hash (SHA-256 of previous hash and body), computed independently of the crate.
mod sha2_like {
    pub fn hash(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
        let mut input = prev.to_vec();
        input.extend_from_slice(body);
        sha256(&input)
    }

    /// FIPS 180-4 SHA-256, for the test only.
    fn sha256(msg: &[u8]) -> [u8; 32] {
        const K: [u32; 64] = [
            0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
            0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
            0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
            0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
            0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
            0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
            0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
        ];
        let mut h: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
        let mut m = msg.to_vec();
        m.push(0x80);
        while m.len() % 64 != 56 {
            m.push(0);
        }
        m.extend_from_slice(&((msg.len() as u64) * 8).to_be_bytes());
        for block in m.chunks(64) {
            let mut w = [0u32; 64];
            for i in 0..16 {
                w[i] = u32::from_be_bytes([block[4 * i], block[4 * i + 1], block[4 * i + 2], block[4 * i + 3]]);
            }
            for i in 16..64 {
                let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
                let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
                w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
            }
            let mut v = h;
            for i in 0..64 {
                let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
                let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
                let t1 = v[7].wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
                let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
                let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
                let t2 = s0.wrapping_add(maj);
                v = [t1.wrapping_add(t2), v[0], v[1], v[2], v[3].wrapping_add(t1), v[4], v[5], v[6]];
            }
            for i in 0..8 {
                h[i] = h[i].wrapping_add(v[i]);
            }
        }
        let mut out = [0u8; 32];
        for i in 0..8 {
            out[4 * i..4 * i + 4].copy_from_slice(&h[i].to_be_bytes());
        }
        out
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn the_chain_survives_crash_and_restart_and_queries_filter() {
    let vfs = MemVfs::new();
    {
        let store = open_mem(&vfs, test_config()).expect("open");
        read(&store, 300, "alice");
        std::mem::forget(store);
    }
    let image = vfs.crash(CrashMode::TearLastWrite);
    let store = open_mem(&image, test_config()).expect("reopen");
    read(&store, 5, "bob");
    let v = store.verify_audit().expect("verify");
    assert_eq!(v.problem, None);
    // 300 + 5 entries plus the automatic checkpoint after entry 256.
    assert_eq!(v.entries, 306);
    assert_eq!(v.checkpoints, 1);
    let bob = store.audit_query(&AuditQuery { actor: Some("bob".into()), ..AuditQuery::default() }).expect("query");
    assert_eq!(bob.len(), 5);
    let cam1 = store
        .audit_query(&AuditQuery { camera: Some("cam-1".into()), action: Some("video.".into()), ..AuditQuery::default() })
        .expect("query");
    assert_eq!(cam1.len(), 100 + 2);
    let late = store.audit_query(&AuditQuery { from_us: Some(T0_US), limit: Some(3), ..AuditQuery::default() }).expect("query");
    assert_eq!(late.len(), 3);
    assert_eq!(late[2].record.actor, "bob");
    // An offline copy verifies with just the public key.
    let pk = store.signing_public_key().expect("pk");
    let copy: Arc<dyn Vfs> = Arc::new(image.clone());
    let offline = storage_core::audit::verify_file(&copy, Path::new(AUDIT), &pk).expect("offline");
    assert_eq!(offline.problem, None);
    let wrong = storage_core::audit::verify_file(&copy, Path::new(AUDIT), &"00".repeat(32)).expect("offline");
    assert!(wrong.problem.is_some(), "checkpoints do not verify under another key");
}

fn reopen(vfs: &MemVfs) -> storage_core::Result<Store> {
    open_mem(vfs, test_config())
}

/// A store with 20 entries, closed; its audit log's bytes.
fn closed_store_with_entries() -> (MemVfs, Vec<u8>) {
    let vfs = MemVfs::new();
    let store = open_mem(&vfs, test_config()).expect("open");
    read(&store, 20, "alice");
    drop(store);
    let bytes = vfs.contents(Path::new(AUDIT)).expect("audit log");
    (vfs, bytes)
}

/// Finding: one flipped byte in the middle of audit.log made the next start cut the log there,
/// deleting every later entry, and Verify then reported ok.
#[test]
fn a_flipped_byte_in_the_middle_of_the_audit_log_is_reported_never_cut() {
    let (vfs, bytes) = closed_store_with_entries();
    let recs = records(&bytes);
    let (off, len) = recs[recs.len() / 2];
    let mut damaged = bytes.clone();
    damaged[off + len / 2] ^= 0x40;
    rewrite(&vfs, Path::new(AUDIT), &damaged);
    let err = reopen(&vfs).map(|_| ()).expect_err("a damaged audit log refuses the open");
    let msg = err.to_string();
    assert!(msg.contains("audit.log") && msg.contains(&format!("byte {off}")), "{msg}");
    assert_eq!(vfs.contents(Path::new(AUDIT)).expect("log"), damaged, "not a byte was cut or rewritten");
}

/// Finding: a deleted audit.log was recreated empty without a word.
#[test]
fn a_deleted_audit_log_is_detected() {
    let (vfs, _) = closed_store_with_entries();
    vfs.remove_file(Path::new(AUDIT)).expect("delete");
    let err = reopen(&vfs).map(|_| ()).expect_err("a missing log refuses the open");
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(!vfs.exists(Path::new(AUDIT)), "no empty log is created in its place");
}

/// Finding: removing the last entry (at a record boundary) left Verify saying ok.
#[test]
fn a_truncated_audit_log_is_detected() {
    let (vfs, bytes) = closed_store_with_entries();
    let recs = records(&bytes);
    for cut in [1usize, 5] {
        let (off, _) = recs[recs.len() - cut];
        rewrite(&vfs, Path::new(AUDIT), &bytes[..off]);
        let err = reopen(&vfs).map(|_| ()).expect_err("a truncated log refuses the open");
        assert!(err.to_string().contains("truncated"), "cut {cut}: {err}");
    }
}

/// An older copy of the whole log put back (a rollback) is detected from the anchor kept in
/// the key directory.
#[test]
fn a_rolled_back_audit_log_is_detected() {
    let (vfs, old) = closed_store_with_entries();
    let store = reopen(&vfs).expect("reopen");
    read(&store, 3, "bob");
    drop(store);
    rewrite(&vfs, Path::new(AUDIT), &old);
    let err = reopen(&vfs).map(|_| ()).expect_err("a rolled-back log refuses the open");
    assert!(err.to_string().contains("rolled back"), "{err}");
    // A replaced log of the same length is refused too: another entry where the anchor's is.
    let (other_vfs, _) = closed_store_with_entries();
    let store = reopen(&other_vfs).expect("reopen");
    read(&store, 3, "mallory");
    drop(store);
    let foreign = other_vfs.contents(Path::new(AUDIT)).expect("log");
    rewrite(&vfs, Path::new(AUDIT), &foreign);
    assert!(reopen(&vfs).is_err(), "another store's log of the same length");
}

/// A torn final write (a crash during an append) is cut, and the cut is itself an audit entry
/// naming the bytes cut, which are kept beside the log.
#[test]
fn a_torn_last_entry_is_cut_and_the_cut_is_recorded() {
    let (vfs, bytes) = closed_store_with_entries();
    // Half of a 21st record's frame, as a crash mid-write leaves it.
    let mut torn = bytes.clone();
    let (off, len) = *records(&bytes).last().expect("records");
    torn.extend_from_slice(&bytes[off..off + len / 2]);
    rewrite(&vfs, Path::new(AUDIT), &torn);
    let store = reopen(&vfs).expect("a torn tail opens");
    let cut = store.audit_query(&AuditQuery { action: Some("audit.tail_cut".into()), ..Default::default() }).expect("query");
    assert_eq!(cut.len(), 1);
    assert_eq!(cut[0].record.detail["offset"].as_u64(), Some(bytes.len() as u64));
    assert_eq!(cut[0].record.detail["bytes"].as_u64(), Some((len / 2) as u64));
    let kept = PathBuf::from(cut[0].record.detail["kept_as"].as_str().expect("kept_as"));
    assert_eq!(vfs.contents(&kept).expect("kept bytes"), bytes[off..off + len / 2].to_vec());
    let v = store.verify_audit().expect("verify");
    assert_eq!(v.problem, None);
    assert_eq!(v.entries, 21);
}

/// The last entry damaged in place after it was acknowledged is not taken for a torn write:
/// the anchor says it was durable.
#[test]
fn an_acknowledged_last_entry_damaged_in_place_is_reported() {
    let (vfs, bytes) = closed_store_with_entries();
    let (off, len) = *records(&bytes).last().expect("records");
    let mut damaged = bytes.clone();
    damaged[off + len - 3] ^= 1;
    rewrite(&vfs, Path::new(AUDIT), &damaged);
    let err = reopen(&vfs).map(|_| ()).expect_err("refused");
    assert!(err.to_string().contains("acknowledged"), "{err}");
    assert_eq!(vfs.contents(Path::new(AUDIT)).expect("log"), damaged);
}
