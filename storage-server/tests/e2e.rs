//! End to end on loopback with the real server process and the `camvault` command: ffmpeg-made
//! H.264 and H.265 (with and without B-frames) ingested, listed, played, exported, checked by
//! ffprobe and ffmpeg, verified offline; the authorisation matrix; SIGKILL during ingest; bad
//! input. Needs ffmpeg (Debian package, installed by `.ci/run`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_camvault");
const T0: &str = "2026-11-23T10:00:00Z";
const T1: &str = "2026-11-23T10:05:00Z";

struct Server {
    child: Child,
    addr: String,
    admin: String,
    data: PathBuf,
    metrics_port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port no other test of this process will be handed: asking the OS for an ephemeral port
/// and releasing it lets two parallel tests receive the same one.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(0, 20_000 + (std::process::id() % 20_000) as u16, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn start(data: &Path, port: u16, metrics_port: u16) -> (Child, Option<String>) {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--data",
            data.to_str().expect("utf8"),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics",
            &format!("127.0.0.1:{metrics_port}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(t) = line.split_whitespace().find(|w| w.starts_with("cvt_")) {
                let _ = tx.send(t.to_string());
            }
        }
    });
    // Wait until it accepts connections.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, rx.recv_timeout(Duration::from_millis(500)).ok())
}

fn server(dir: &Path) -> Server {
    let data = dir.join("data");
    let port = free_port();
    let metrics_port = free_port();
    let (child, token) = start(&data, port, metrics_port);
    Server { child, addr: format!("http://127.0.0.1:{port}"), admin: token.expect("first admin token printed"), data, metrics_port }
}

fn run(s: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("CAMVAULT_SERVER", &s.addr).env("CAMVAULT_TOKEN", token).output().expect("run camvault")
}

fn ok(s: &Server, token: &str, args: &[&str]) -> String {
    let out = run(s, token, args);
    assert!(out.status.success(), "camvault {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The server's signing key, as `camvault server-key` prints it: what a verifier trusts.
fn server_key(s: &Server) -> String {
    let out = ok(s, &s.admin, &["server-key"]);
    out.lines().find(|l| l.starts_with("public key")).and_then(|l| l.split_whitespace().last()).expect("public key printed").to_string()
}

fn token(s: &Server, name: &str, unit: &str, roles: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--name", name, "--unit", unit, "--roles", roles];
    args.extend_from_slice(extra);
    ok(s, &s.admin, &args)
}

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).output().expect("ffmpeg is installed (apt-get install ffmpeg)");
    assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn encode(dir: &Path, name: &str, codec: &str, bframes: bool, seconds: u32) -> PathBuf {
    let path = dir.join(name);
    let t = seconds.to_string();
    let p = path.to_str().expect("utf8");
    let bf = if bframes { "3" } else { "0" };
    match codec {
        "h264" => ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-t",
            &t,
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-g",
            "25",
            "-bf",
            bf,
            p,
        ]),
        _ => ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-t",
            &t,
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx265",
            "-x265-params",
            &format!("log-level=error:keyint=25:bframes={bf}"),
            p,
        ]),
    }
    path
}

fn frames_in(file: &Path) -> u64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(file)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// The digest algorithm and hex digest a saved manifest states for its file.
fn stated_digest(manifest_file: &str) -> (String, String) {
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest_file).expect("manifest")).expect("json");
    let m: serde_json::Value = serde_json::from_str(doc["manifest"].as_str().expect("manifest text")).expect("manifest json");
    (m["digest_algorithm"].as_str().unwrap_or_default().to_string(), m["file_digest"].as_str().unwrap_or_default().to_string())
}

/// A file's digest as a standard command-line tool prints it (`b3sum`, `sha256sum`).
fn tool_digest(tool: &str, file: &Path) -> String {
    let out = Command::new(tool).arg(file).output().unwrap_or_else(|e| panic!("{tool} (Debian package b3sum / coreutils): {e}"));
    assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

#[test]
fn ingest_list_play_export_verify_h264_and_h265() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = server(dir.path());
    let cams = ["h264-b", "h264-nob", "h265-b", "h265-nob"];
    for c in cams {
        ok(&s, &s.admin, &["camera", "put", "--id", c, "--unit", "unit-1", "--sectors", "traffic"]);
    }
    let ingest = token(&s, "edge-1", "unit-1", "ingest", &["--cameras", &cams.join(",")]);
    let op = token(&s, "op-1", "unit-1", "operator", &[]);
    let key = server_key(&s);
    for (cam, codec, bf) in [("h264-b", "h264", true), ("h264-nob", "h264", false), ("h265-b", "h265", true), ("h265-nob", "h265", false)] {
        let ext = if codec == "h264" { "h264" } else { "h265" };
        let src = encode(dir.path(), &format!("{cam}.{ext}"), codec, bf, 4);
        let out = ok(&s, &ingest, &["ingest", src.to_str().expect("utf8"), "--camera", cam, "--fast", "--start", T0]);
        assert!(out.contains("100 frames ingested and durable"), "{out}");
        let rec = ok(&s, &op, &["recordings", "--camera", cam, "--from", T0, "--to", T1]);
        assert!(rec.starts_with("recorded 2026-11-23T10:00:00.000000Z"), "{rec}");
        let played = ok(&s, &op, &["play", "--camera", cam, "--from", T0, "--to", T1, "--purpose", "review"]);
        assert_eq!(played, "100 frames");
        let mp4 = dir.path().join(format!("{cam}.mp4"));
        let m = mp4.to_str().expect("utf8");
        ok(
            &s,
            &op,
            &["export", "--camera", cam, "--from", T0, "--to", T1, "--out", m, "--purpose", "incident", "--requester", "traffic police"],
        );
        assert_eq!(frames_in(&mp4), 100, "{cam}: every ingested frame is in the file");
        let dec = Command::new("ffmpeg").args(["-v", "error", "-i", m, "-f", "null", "-"]).output().expect("ffmpeg");
        assert!(dec.status.success() && dec.stderr.is_empty(), "{cam} decodes without error: {}", String::from_utf8_lossy(&dec.stderr));
        let manifest = format!("{m}.manifest.json");
        ok(&s, &op, &["verify-export", m, &manifest, "--public-key", &key]);
        // The manifest's digest is the one standard tools compute: BLAKE3 by default (b3sum),
        // SHA-256 when asked for (sha256sum).
        assert_eq!(stated_digest(&manifest), ("blake3".to_string(), tool_digest("b3sum", &mp4)), "{cam}");
        let sha_mp4 = dir.path().join(format!("{cam}-sha256.mp4"));
        let sm = sha_mp4.to_str().expect("utf8");
        let export = ["export", "--camera", cam, "--from", T0, "--to", T1, "--out", sm, "--purpose", "incident", "--digest", "sha256"];
        ok(&s, &op, &export);
        let sha_manifest = format!("{sm}.manifest.json");
        ok(&s, &op, &["verify-export", sm, &sha_manifest, "--public-key", &key]);
        assert_eq!(stated_digest(&sha_manifest), ("sha256".to_string(), tool_digest("sha256sum", &sha_mp4)), "{cam}");
        assert_eq!(std::fs::read(&sha_mp4).expect("mp4"), std::fs::read(&mp4).expect("mp4"), "{cam}: the digest changes only the manifest");
        // One changed byte is caught.
        let mut bytes = std::fs::read(&mp4).expect("mp4");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        let bad = dir.path().join(format!("{cam}-bad.mp4"));
        std::fs::write(&bad, bytes).expect("write");
        let out = run(&s, &op, &["verify-export", bad.to_str().expect("utf8"), &manifest, "--public-key", &key]);
        assert!(!out.status.success(), "a changed byte must fail verification");
    }
}

#[test]
fn authorisation_matrix_and_audit_of_every_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = server(dir.path());
    ok(&s, &s.admin, &["camera", "put", "--id", "cam-u1", "--unit", "unit-1", "--sectors", "traffic"]);
    ok(&s, &s.admin, &["camera", "put", "--id", "cam-u2", "--unit", "unit-2", "--sectors", "health"]);
    let ingest = token(&s, "edge", "unit-1", "ingest", &["--cameras", "cam-u1,cam-u2"]);
    let src = encode(dir.path(), "clip.h264", "h264", false, 2);
    for c in ["cam-u1", "cam-u2"] {
        ok(&s, &ingest, &["ingest", src.to_str().expect("utf8"), "--camera", c, "--fast", "--start", T0]);
    }
    let op1 = token(&s, "op1", "unit-1", "operator", &[]);
    let viewer_traffic = token(&s, "vt", "sector-centre", "viewer", &["--sectors", "traffic"]);
    let auditor = token(&s, "aud", "inspectorate", "auditor", &[]);
    let play = |tok: &str, cam: &str, extra: &[&str]| {
        let mut a = vec!["play", "--camera", cam, "--from", T0, "--to", T1];
        a.extend_from_slice(extra);
        run(&s, tok, &a)
    };
    let allowed = |o: &Output| o.status.success();
    let denied = |o: &Output, code: &str| !o.status.success() && String::from_utf8_lossy(&o.stderr).contains(code);
    // Operators read their unit's cameras; outside needs an approval reference.
    assert!(allowed(&play(&op1, "cam-u1", &["--purpose", "p"])));
    assert!(denied(&play(&op1, "cam-u2", &["--purpose", "p"]), "PermissionDenied"));
    assert!(allowed(&play(&op1, "cam-u2", &["--purpose", "p", "--approval", "UBND-123"])));
    // A purpose is always required: the command refuses before calling (the server's own
    // refusal is tested over raw gRPC in grpc_bad_input.rs).
    assert!(denied(&play(&op1, "cam-u1", &[]), "--purpose"));
    // Viewers read cameras of their sectors.
    assert!(allowed(&play(&viewer_traffic, "cam-u1", &["--purpose", "p"])));
    assert!(denied(&play(&viewer_traffic, "cam-u2", &["--purpose", "p"]), "PermissionDenied"));
    // Admin rights are not video rights: outside its unit, only with a justification.
    assert!(denied(&play(&s.admin, "cam-u1", &["--purpose", "p"]), "PermissionDenied"));
    assert!(allowed(&play(&s.admin, "cam-u1", &["--purpose", "p", "--justification", "emergency"])));
    assert!(allowed(&play(&s.admin, "cam-u1", &["--purpose", "p", "--justification", "repair"])));
    assert!(denied(&play(&s.admin, "cam-u1", &["--purpose", "p", "--justification", "written-request"]), "InvalidArgument"));
    assert!(allowed(&play(&s.admin, "cam-u1", &["--purpose", "p", "--justification", "written-request", "--document", "CV-77/2026"])));
    // Auditors and ingest credentials read no video; auditors read the audit log.
    assert!(denied(&play(&auditor, "cam-u1", &["--purpose", "p"]), "PermissionDenied"));
    assert!(denied(&play(&ingest, "cam-u1", &["--purpose", "p"]), "PermissionDenied"));
    assert!(denied(&run(&s, &op1, &["audit", "verify"]), "PermissionDenied"));
    assert!(ok(&s, &auditor, &["audit", "verify"]).contains("signed checkpoints"));
    // Ingest credentials publish only to their cameras; others may not publish.
    ok(&s, &s.admin, &["camera", "put", "--id", "cam-other", "--unit", "unit-1"]);
    assert!(denied(&run(&s, &ingest, &["ingest", src.to_str().expect("utf8"), "--camera", "cam-other", "--fast"]), "PermissionDenied"));
    assert!(denied(&run(&s, &op1, &["ingest", src.to_str().expect("utf8"), "--camera", "cam-u1", "--fast"]), "PermissionDenied"));
    // Admin-only calls.
    assert!(denied(&run(&s, &op1, &["token", "list"]), "PermissionDenied"));
    assert!(denied(&run(&s, &op1, &["retention", "set", "--camera", "cam-u1", "--days", "60"]), "PermissionDenied"));
    assert!(denied(&run(&s, &s.admin, &["retention", "set", "--camera", "cam-u1", "--days", "7"]), "FailedPrecondition"));
    ok(&s, &s.admin, &["retention", "set", "--camera", "cam-u1", "--days", "60"]);
    // Export outside scope needs an approval reference.
    let out = dir.path().join("x.mp4");
    let o = out.to_str().expect("utf8");
    assert!(denied(
        &run(&s, &op1, &["export", "--camera", "cam-u2", "--from", T0, "--to", T1, "--out", o, "--purpose", "p"]),
        "PermissionDenied"
    ));
    ok(
        &s,
        &op1,
        &[
            "export",
            "--camera",
            "cam-u2",
            "--from",
            T0,
            "--to",
            T1,
            "--out",
            o,
            "--purpose",
            "court",
            "--requester",
            "court-7",
            "--approval",
            "UBND-9",
        ],
    );
    // Unauthenticated calls are refused.
    assert!(denied(&run(&s, "cvt_0000", &["camera", "list"]), "Unauthenticated"));
    // Every allowed read left its entry, with who, camera, purpose, approval and justification.
    let reads = ok(&s, &auditor, &["audit", "query", "--action", "video."]);
    let entries: Vec<serde_json::Value> = reads.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(entries.iter().filter(|e| e["action"] == "video.read").count(), 6, "{reads}");
    assert!(entries.iter().any(|e| e["actor"] == "admin" && e["justification"] == "written_request:CV-77/2026"));
    assert!(entries.iter().any(|e| e["actor"] == "op1" && e["approval_ref"] == "UBND-123" && e["cameras"][0] == "cam-u2"));
    // The export: one entry before its first byte, one with the signed manifest's digest.
    let export = entries.iter().position(|e| e["action"] == "video.export").expect("export audited");
    let manifest = entries.iter().position(|e| e["action"] == "video.export.manifest").expect("manifest audited");
    assert!(export < manifest, "{reads}");
    for e in [&entries[export], &entries[manifest]] {
        assert_eq!(e["requester"], "court-7");
        assert_eq!(e["detail"]["digest_algorithm"], "blake3");
    }
    assert_eq!(entries[manifest]["detail"]["digest"].as_str().map(str::len), Some(64));
    let logins = ok(&s, &auditor, &["audit", "query", "--action", "login"]);
    assert!(logins.lines().count() >= 4);
    // Prometheus metrics count the frames in and the refusals.
    let metrics = http_get(s.metrics_port, "/metrics");
    assert!(metrics.contains("camvault_frames_in_total{camera=\"cam-u1\"} 50"), "{metrics}");
    let failures: u64 = metrics
        .lines()
        .find(|l| l.starts_with("camvault_authorization_failures_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("authorization failures metric");
    assert!(failures >= 8, "{failures}");
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    // Written in pieces on purpose: the server must wait for the whole request head.
    for piece in ["GET ", path, " HTTP/1.1\r\nHost: localhost\r\n", "\r\n"] {
        s.write_all(piece.as_bytes()).expect("write");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn sigkill_during_ingest_keeps_every_acknowledged_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = server(dir.path());
    ok(&s, &s.admin, &["camera", "put", "--id", "cam-k", "--unit", "unit-1"]);
    let ingest = token(&s, "edge", "unit-1", "ingest", &["--cameras", "cam-k"]);
    let op = token(&s, "op", "unit-1", "operator", &[]);
    let src = encode(dir.path(), "long.h264", "h264", true, 20);
    // Paced at 25 fps: the kill lands mid-stream.
    let client = Command::new(BIN)
        .args(["ingest", src.to_str().expect("utf8"), "--camera", "cam-k", "--start", T0])
        .env("CAMVAULT_SERVER", &s.addr)
        .env("CAMVAULT_TOKEN", &ingest)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("client");
    std::thread::sleep(Duration::from_secs(4));
    s.child.kill().expect("SIGKILL");
    let _ = s.child.wait();
    let out = client.wait_with_output().expect("client exits");
    let acked = acknowledged(&out.stderr);
    restart_and_check(&mut s, &op, "cam-k", acked);
}

/// The highest durable acknowledgement the ingest client printed ("N/total" in its progress).
fn acknowledged(stderr: &[u8]) -> u64 {
    let progress = String::from_utf8_lossy(stderr);
    let acked = progress
        .split('\r')
        .filter_map(|p| p.split_whitespace().find(|w| w.contains('/')).and_then(|w| w.split('/').next()).and_then(|n| n.parse().ok()))
        .max()
        .unwrap_or(0);
    assert!(acked > 0, "some frames were acknowledged before the stop: {progress}");
    acked
}

/// Restarts the server on the same data and port; every acknowledged frame must be there.
fn restart_and_check(s: &mut Server, op: &str, camera: &str, acked: u64) {
    let port: u16 = s.addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let (child, _) = start(&s.data, port, s.metrics_port);
    s.child = child;
    let played = ok(s, op, &["play", "--camera", camera, "--from", T0, "--to", T1, "--purpose", "check"]);
    let frames: u64 = played.split_whitespace().next().and_then(|n| n.parse().ok()).expect("count");
    assert!(frames >= acked, "{frames} frames after restart, {acked} were acknowledged");
}

#[test]
fn bad_input_gets_clear_errors_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = server(dir.path());
    ok(&s, &s.admin, &["camera", "put", "--id", "cam-1", "--unit", "unit-1"]);
    let ingest = token(&s, "edge", "unit-1", "ingest", &["--cameras", "cam-1,ghost"]);
    let op = token(&s, "op", "unit-1", "operator", &[]);
    let src = encode(dir.path(), "a.h264", "h264", false, 2);
    ok(&s, &ingest, &["ingest", src.to_str().expect("utf8"), "--camera", "cam-1", "--fast", "--start", T0]);
    // The same video again, as a publisher resuming would send it: acknowledged, not doubled.
    ok(&s, &ingest, &["ingest", src.to_str().expect("utf8"), "--camera", "cam-1", "--fast", "--start", T0]);
    // Other video at the stored times (the same frames at 50 fps land between the stored
    // ones): refused, nothing lost.
    let other = run(&s, &ingest, &["ingest", src.to_str().expect("utf8"), "--camera", "cam-1", "--fast", "--start", T0, "--fps", "50"]);
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("AlreadyExists"), "{}", String::from_utf8_lossy(&other.stderr));
    // Not an elementary stream.
    let junk = dir.path().join("junk.h264");
    std::fs::write(&junk, b"this is not video").expect("write");
    let out = run(&s, &ingest, &["ingest", junk.to_str().expect("utf8"), "--camera", "cam-1", "--fast"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("access units"));
    // Wrong codec data: H.264 bytes declared as H.265 carry no VPS.
    let out = run(&s, &ingest, &["ingest", src.to_str().expect("utf8"), "--camera", "cam-1", "--fast", "--codec", "h265", "--start", T1]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // Malformed times and unknown cameras.
    let out = run(&s, &op, &["recordings", "--camera", "cam-1", "--from", "yesterday"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
    let out = run(&s, &op, &["play", "--camera", "nope", "--from", T0, "--to", T1, "--purpose", "p"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    // The server still serves, and the stored video is whole.
    let played = ok(&s, &op, &["play", "--camera", "cam-1", "--from", T0, "--to", T1, "--purpose", "check"]);
    assert_eq!(played, "50 frames");
}

#[test]
fn sigterm_stops_gracefully_and_keeps_what_was_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = server(dir.path());
    ok(&s, &s.admin, &["camera", "put", "--id", "cam-t", "--unit", "unit-1"]);
    let ingest = token(&s, "edge", "unit-1", "ingest", &["--cameras", "cam-t"]);
    let op = token(&s, "op", "unit-1", "operator", &[]);
    let src = encode(dir.path(), "long.h265", "h265", false, 30);
    let client = Command::new(BIN)
        .args(["ingest", src.to_str().expect("utf8"), "--camera", "cam-t", "--start", T0])
        .env("CAMVAULT_SERVER", &s.addr)
        .env("CAMVAULT_TOKEN", &ingest)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("client");
    std::thread::sleep(Duration::from_secs(3));
    let term = Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().expect("kill");
    assert!(term.success());
    let started = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().expect("wait") {
            break st;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the server did not stop within its grace period");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "a graceful stop exits cleanly: {status:?}");
    let out = client.wait_with_output().expect("client");
    restart_and_check(&mut s, &op, "cam-t", acknowledged(&out.stderr));
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn mutual_tls_admits_only_clients_with_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=camvault test CA",
        ],
    );
    std::fs::write(d.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").expect("ext");
    std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for (name, cn) in [("server", "localhost"), ("client", "operator-console")] {
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
    let port = free_port();
    let p = |f: &str| d.join(f).to_str().expect("utf8").to_string();
    let mut child = Command::new(BIN)
        .args(["serve", "--data", &p("data"), "--listen", &format!("127.0.0.1:{port}"), "--metrics", ""])
        .args(["--tls-cert", &p("server.pem"), "--tls-key", &p("server.key"), "--tls-client-ca", &p("ca.pem")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("server");
    let mut line = String::new();
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    reader.read_line(&mut line).expect("token line");
    let admin = line.split_whitespace().find(|w| w.starts_with("cvt_")).expect("admin token").to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let call = |server: &str, extra: &[&str]| {
        Command::new(BIN).args(["camera", "list", "--server", server, "--token", &admin]).args(extra).output().expect("client")
    };
    let https = format!("https://127.0.0.1:{port}");
    let with_cert = call(&https, &["--ca", &p("ca.pem"), "--cert", &p("client.pem"), "--key", &p("client.key")]);
    let without_cert = call(&https, &["--ca", &p("ca.pem")]);
    let plaintext = call(&format!("http://127.0.0.1:{port}"), &[]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(with_cert.status.success(), "{}", String::from_utf8_lossy(&with_cert.stderr));
    assert!(!without_cert.status.success(), "a client without a certificate is refused");
    assert!(!plaintext.status.success(), "plaintext is refused");
}

#[test]
fn ingest_from_mp4_files_h264_and_h265() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = server(dir.path());
    let ingest = token(&s, "edge", "unit-1", "ingest", &["--cameras", "mp4-264,mp4-265"]);
    let op = token(&s, "op", "unit-1", "operator", &[]);
    for (cam, codec) in [("mp4-264", "libx264"), ("mp4-265", "libx265")] {
        ok(&s, &s.admin, &["camera", "put", "--id", cam, "--unit", "unit-1"]);
        let src = dir.path().join(format!("{cam}.mp4"));
        let p = src.to_str().expect("utf8");
        let mut args =
            vec!["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "4", "-pix_fmt", "yuv420p", "-c:v", codec, "-g", "25"];
        if codec == "libx265" {
            args.extend_from_slice(&["-x265-params", "log-level=error", "-tag:v", "hvc1"]);
        }
        args.push(p);
        ffmpeg(&args);
        let out = ok(&s, &ingest, &["ingest", p, "--camera", cam, "--fast", "--start", T0]);
        assert!(out.contains("100 frames ingested and durable"), "{out}");
        let mp4 = dir.path().join(format!("{cam}-export.mp4"));
        let m = mp4.to_str().expect("utf8");
        ok(&s, &op, &["export", "--camera", cam, "--from", T0, "--to", T1, "--out", m, "--purpose", "review"]);
        assert_eq!(frames_in(&mp4), 100);
        let dec = Command::new("ffmpeg").args(["-v", "error", "-i", m, "-f", "null", "-"]).output().expect("ffmpeg");
        assert!(dec.status.success() && dec.stderr.is_empty(), "{cam}: {}", String::from_utf8_lossy(&dec.stderr));
    }
}

#[test]
fn health_and_reflection_v1_and_v1alpha_list_the_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = server(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let ch = tonic::transport::Channel::from_shared(s.addr.clone()).expect("uri").connect().await.expect("connect");
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
        let h = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health").into_inner();
        assert_eq!(h.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

        use tonic_reflection::pb::v1 as r1;
        let mut c1 = r1::server_reflection_client::ServerReflectionClient::new(ch.clone());
        let req = r1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(String::new())),
        };
        let mut resp = c1.server_reflection_info(tokio_stream::iter(vec![req])).await.expect("reflection v1").into_inner();
        let msg = resp.message().await.expect("message").expect("a response");
        let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("not a service list")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for svc in ["camvault.v1.Ingest", "camvault.v1.Export", "camvault.v1.Admin", "grpc.health.v1.Health"] {
            assert!(names.iter().any(|n| n == svc), "{svc} missing from {names:?}");
        }

        use tonic_reflection::pb::v1alpha as ra;
        let mut ca = ra::server_reflection_client::ServerReflectionClient::new(ch);
        let req = ra::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(ra::server_reflection_request::MessageRequest::ListServices(String::new())),
        };
        let mut resp = ca.server_reflection_info(tokio_stream::iter(vec![req])).await.expect("reflection v1alpha").into_inner();
        let msg = resp.message().await.expect("message").expect("a response");
        let Some(ra::server_reflection_response::MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("not a service list")
        };
        assert!(list.service.iter().any(|s| s.name == "camvault.v1.Playback"));
    });
}

/// Finding 9 of the operator issue: a live follow is woken by frames becoming durable (no
/// sleeping poll loop), and the codec configuration is sent once per change, not per wake-up.
#[test]
fn live_follow_is_woken_by_durable_frames_and_sends_the_config_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = server(dir.path());
    ok(&s, &s.admin, &["camera", "put", "--id", "cam-live", "--unit", "unit-1"]);
    let ingest = token(&s, "edge", "unit-1", "ingest", &["--cameras", "cam-live"]);
    let op = token(&s, "op", "unit-1", "operator", &[]);
    let src = encode(dir.path(), "live.h264", "h264", false, 2);
    // A first clip so that the camera exists in the store, then a follower, then more video.
    ok(&s, &ingest, &["ingest", src.to_str().expect("utf8"), "--camera", "cam-live", "--fast", "--start", T0]);
    let mut follower = Command::new(BIN)
        .args(["play", "--camera", "cam-live", "--from", T0, "--follow", "--verbose", "--purpose", "live watch"])
        .env("CAMVAULT_SERVER", &s.addr)
        .env("CAMVAULT_TOKEN", &op)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("follower");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let mut wait_for_frames = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while lines.iter().filter(|l: &&String| l.contains("key=")).count() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => lines.push(l),
                Err(_) => panic!("the follower saw fewer than {n} frames: {lines:?}"),
            }
        }
        lines.clone()
    };
    wait_for_frames(50);
    // The follower has caught up and waits: the next clip's frames reach it as they become
    // durable.
    ok(&s, &ingest, &["ingest", src.to_str().expect("utf8"), "--camera", "cam-live", "--fast", "--start", "2026-11-23T10:00:30Z"]);
    let seen = wait_for_frames(100);
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(seen.iter().filter(|l| l.contains("key=")).count(), 100, "the stored clip and then the live one: {seen:?}");
    // Two streams with the same parameter sets: the configuration went out with the first
    // frame and again only where a new segment's run began, never once per wake-up.
    let configs = seen.iter().filter(|l| l.starts_with("codec config")).count();
    assert!((1..=2).contains(&configs), "{configs} codec configurations for 2 streams: {seen:?}");
}

/// Findings 3 and 8 of the ingest issue: a camera that reconnects restarts its presentation
/// clock (B-frames, pts from 0 again); an export across the reconnect plays in order, ffmpeg
/// finds nothing wrong, and its manifest lists the gap between the two runs. An export of a
/// range with no video is refused and audited as that, not as an export.
#[test]
fn an_export_across_a_reconnect_plays_in_order_and_lists_its_gaps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = server(dir.path());
    ok(&s, &s.admin, &["camera", "put", "--id", "cam-re", "--unit", "unit-1"]);
    let ingest = token(&s, "edge", "unit-1", "ingest", &["--cameras", "cam-re"]);
    let op = token(&s, "op", "unit-1", "operator", &[]);
    let auditor = token(&s, "aud", "unit-1", "auditor", &[]);
    let src = encode(dir.path(), "b.h264", "h264", true, 2);
    // Two publishes of a B-frame clip, each with its pts from 0: the second starts 10 s after
    // the first ends.
    ok(&s, &ingest, &["ingest", src.to_str().expect("utf8"), "--camera", "cam-re", "--fast", "--start", "2026-11-23T10:00:00Z"]);
    ok(&s, &ingest, &["ingest", src.to_str().expect("utf8"), "--camera", "cam-re", "--fast", "--start", "2026-11-23T10:00:12Z"]);
    let out = dir.path().join("re.mp4");
    let o = out.to_str().expect("utf8");
    ok(&s, &op, &["export", "--camera", "cam-re", "--from", T0, "--to", "2026-11-23T10:00:20Z", "--out", o, "--purpose", "reconnect"]);
    let dec = Command::new("ffmpeg").args(["-v", "error", "-i", o, "-f", "null", "-"]).output().expect("ffmpeg");
    assert!(dec.status.success() && dec.stderr.is_empty(), "ffmpeg: {}", String::from_utf8_lossy(&dec.stderr));
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts", "-of", "csv=p=0", o])
        .output()
        .expect("ffprobe");
    let pts: Vec<i64> = String::from_utf8_lossy(&probe.stdout).lines().filter_map(|l| l.split(',').next()?.trim().parse().ok()).collect();
    assert_eq!(pts.len(), 100, "both runs play: {}", String::from_utf8_lossy(&probe.stdout));
    assert!(pts.windows(2).all(|w| w[0] < w[1]), "frames are presented in order across the reconnect: {pts:?}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{o}.manifest.json")).expect("manifest")).expect("json");
    let doc: serde_json::Value = serde_json::from_str(manifest["manifest"].as_str().expect("signed text")).expect("json");
    let gaps = doc["gaps"].as_array().expect("gaps");
    assert!(
        gaps.iter().any(|g| g["to_us"].as_i64().unwrap_or(0) - g["from_us"].as_i64().unwrap_or(0) >= 9_000_000),
        "the 10 s between the runs is a gap: {doc}"
    );
    // A range with no video: refused, and audited as a request that found nothing.
    let none = run(
        &s,
        &op,
        &[
            "export",
            "--camera",
            "cam-re",
            "--from",
            "2026-11-23T11:00:00Z",
            "--to",
            "2026-11-23T11:01:00Z",
            "--out",
            o,
            "--purpose",
            "nothing",
        ],
    );
    assert!(!none.status.success() && String::from_utf8_lossy(&none.stderr).contains("NotFound"));
    let audited = [
        ok(&s, &auditor, &["audit", "query", "--action", "video.export"]),
        ok(&s, &auditor, &["audit", "query", "--action", "video.export.none"]),
    ]
    .join("\n");
    let entries: Vec<serde_json::Value> = audited.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert!(entries.iter().any(|e| e["action"] == "video.export.none" && e["purpose"] == "nothing"), "{audited}");
    assert!(!entries.iter().any(|e| e["action"] == "video.export" && e["purpose"] == "nothing"), "not an export: {audited}");
}
