//! The operator's command line, through the real `camvault` binary: help that starts nothing,
//! usage errors (exit 2) for misspelt options and bad values, the configuration's precedence,
//! times as typed, the offline checks under a trusted key only, scrub and demo on local stores,
//! and the PKCS#11 KEK provider named in the configuration (SoftHSM2, installed by `.ci/run`).
//! Regressions are named after the findings of issue 15.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};

const BIN: &str = env!("CARGO_BIN_EXE_camvault");

/// Exit status of a usage error (clap's).
const USAGE_ERROR: i32 = 2;

/// How long a server may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The command with an environment that knows no server, token or pinned key: each test says
/// what it wants, and nothing leaks in from the machine's own settings.
fn camvault(cwd: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(cwd)
        .env_remove("CAMVAULT_SERVER")
        .env_remove("CAMVAULT_TOKEN")
        .env_remove("CAMVAULT_CA")
        .env_remove("CAMVAULT_CERT")
        .env_remove("CAMVAULT_KEY")
        .env_remove("CAMVAULT_TRUSTED_KEY")
        .env("HOME", cwd.join("home"))
        .env("XDG_CONFIG_HOME", cwd.join("xdg"))
        .env("RUST_LOG", "info");
    c
}

fn run(cwd: &Path, args: &[&str]) -> Output {
    camvault(cwd).args(args).output().expect("run camvault")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_usage_error(out: &Output, names: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(USAGE_ERROR), "stdout: {} stderr: {err}", text(&out.stdout));
    assert!(err.contains(names), "the error names {names}: {err}");
}

/// A port no other test of this process will be handed: asking the OS for an ephemeral port
/// and releasing it lets two parallel tests receive the same one.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(0, 40_000 + (std::process::id() % 20_000) as u16, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A running `camvault serve`, killed when dropped. Its stderr goes to a file, read on demand.
struct Server {
    child: Child,
    url: String,
    admin: Option<String>,
    stderr: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// Starts `camvault serve ARGS` and waits until `port` accepts connections (or the process
/// exits, which fails the test with its log).
fn serve(cwd: &Path, port: u16, args: &[&str], env: &[(&str, &str)]) -> Server {
    let stderr = cwd.join(format!("serve-{port}.log"));
    let mut cmd = camvault(cwd);
    cmd.arg("serve").args(args).stdout(Stdio::piped()).stderr(std::fs::File::create(&stderr).expect("log file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(t) = line.split_whitespace().find(|w| w.starts_with("cvt_")) {
                let _ = tx.send(t.to_string());
            }
        }
    });
    let deadline = Instant::now() + START_DEADLINE;
    while !listening(port) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited ({status}): {}", std::fs::read_to_string(&stderr).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "the server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The token line is printed before the listener opens.
    let admin = rx.recv_timeout(Duration::from_secs(5)).ok();
    Server { child, url: format!("http://127.0.0.1:{port}"), admin, stderr }
}

/// A fresh server on a free port with its data in `cwd/data` and no metrics listener.
fn fresh_server(cwd: &Path) -> (Server, String) {
    let port = free_port();
    let data = cwd.join("data");
    let s = serve(cwd, port, &["--data", data.to_str().expect("utf8"), "--listen", &format!("127.0.0.1:{port}"), "--metrics", ""], &[]);
    let admin = s.admin.clone().expect("a fresh store prints its first admin token");
    (s, admin)
}

/// `camvault ARGS` as a client of `s`.
fn client(cwd: &Path, s: &Server, token: &str, args: &[&str]) -> Output {
    camvault(cwd).args(args).env("CAMVAULT_SERVER", &s.url).env("CAMVAULT_TOKEN", token).output().expect("run camvault")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "exit {:?}: {}", out.status.code(), text(&out.stderr));
    text(&out.stdout)
}

// ---------------------------------------------------------------------------------------------
// Help and usage errors

#[test]
fn serve_help_prints_help_and_starts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let out = run(dir.path(), &["serve", "--help", "--listen", &format!("127.0.0.1:{port}")]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("Usage: camvault serve") && stdout.contains("--listen") && stdout.contains("--config"), "{stdout}");
    assert!(stdout.contains("overrides"), "the help states the precedence: {stdout}");
    assert!(!stdout.contains("cvt_") && !text(&out.stderr).contains("cvt_"), "no token printed");
    assert!(!dir.path().join("camvault-data").exists(), "no data directory created");
    assert!(!listening(port), "nothing listens");
}

#[test]
fn scrub_help_scrubs_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(dir.path(), &["scrub", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Usage: camvault scrub"), "{stdout}");
    assert!(!stdout.contains("damaged"), "{stdout}");
    assert!(!dir.path().join("camvault-data").exists());
    // Without a store to scrub it says what it needs instead of scrubbing ./camvault-data.
    assert_usage_error(&run(dir.path(), &["scrub"]), "--config");
    assert!(!dir.path().join("camvault-data").exists());
}

#[test]
fn every_verb_has_help() {
    let dir = tempfile::tempdir().expect("tempdir");
    let verbs: &[&[&str]] = &[
        &[],
        &["serve"],
        &["ingest"],
        &["recordings"],
        &["play"],
        &["export"],
        &["hold"],
        &["hold", "place"],
        &["hold", "release"],
        &["hold", "list"],
        &["retention"],
        &["retention", "get"],
        &["retention", "set"],
        &["retention", "sweep"],
        &["audit"],
        &["audit", "query"],
        &["audit", "verify"],
        &["camera"],
        &["camera", "put"],
        &["camera", "list"],
        &["camera", "health"],
        &["token"],
        &["token", "create"],
        &["token", "revoke"],
        &["token", "list"],
        &["server-key"],
        &["decommission"],
        &["verify-export"],
        &["verify-certificate"],
        &["scrub"],
        &["demo"],
    ];
    for verb in verbs {
        let mut args = verb.to_vec();
        args.push("--help");
        let out = run(dir.path(), &args);
        let usage = format!("Usage: camvault{}{}", if verb.is_empty() { "" } else { " " }, verb.join(" "));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(&usage), "{args:?}: {}", text(&out.stdout));
    }
    assert!(!dir.path().join("camvault-data").exists());
}

#[test]
fn a_misspelt_option_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["export", "--camera", "c", "--form", "2026-11-23T08:00:00Z", "--to", "now", "--out", "x.mp4", "--purpose", "p"];
    let out = camvault(dir.path()).args(args).env("CAMVAULT_TOKEN", "cvt_x").output().expect("run");
    assert_usage_error(&out, "--form");
    assert!(text(&out.stderr).contains("--from"), "clap suggests the right name: {}", text(&out.stderr));
    assert!(!dir.path().join("x.mp4.part").exists(), "nothing was exported");
    // The finding's other half: a hold with a misspelt --from held everything.
    let hold = ["hold", "place", "--case", "c", "--cameras", "a", "--frm", "-1h", "--to", "now", "--reason", "r"];
    assert_usage_error(&camvault(dir.path()).args(hold).env("CAMVAULT_TOKEN", "cvt_x").output().expect("run"), "--frm");
    assert_usage_error(&run(dir.path(), &["frobnicate"]), "frobnicate");
}

#[test]
fn a_bad_limit_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // "-1" reads as an unknown option rather than as a value: an error all the same.
    for (bad, names) in [("x", "--limit"), ("0", "--limit"), ("4294967296", "--limit"), ("-1", "-1")] {
        let out = camvault(dir.path()).args(["audit", "query", "--limit", bad]).env("CAMVAULT_TOKEN", "cvt_x").output().expect("run");
        assert_usage_error(&out, names);
    }
    for (args, names) in [
        (&["ingest", "f.h264", "--camera", "c", "--fps", "fast"][..], "--fps"),
        (&["retention", "set", "--camera", "c", "--days", "thirty"][..], "--days"),
        (&["hold", "release", "--id", "one", "--reason", "r"][..], "--id"),
        (&["token", "create", "--name", "n", "--unit", "u", "--roles", "operator,superuser"][..], "superuser"),
        (&["export", "--camera", "c", "--last", "30m", "--out", "o", "--purpose", "p", "--digest", "md5"][..], "md5"),
        (&["play", "--camera", "c", "--last", "30m", "--purpose", "p", "--justification", "because"][..], "because"),
    ] {
        let out = camvault(dir.path()).args(args).env("CAMVAULT_TOKEN", "cvt_x").output().expect("run");
        assert_usage_error(&out, names);
    }
}

#[test]
fn hold_place_without_from_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = camvault(dir.path())
        .args(["hold", "place", "--case", "HS-1", "--cameras", "cam-1", "--to", "now", "--reason", "r"])
        .env("CAMVAULT_TOKEN", "cvt_x")
        .output()
        .expect("run");
    assert_usage_error(&out, "--from");
    // Each required option of hold place is required.
    let full = ["--case", "HS-1", "--cameras", "cam-1", "--from", "-1h", "--to", "now", "--reason", "r"];
    for drop in ["--case", "--cameras", "--to", "--reason"] {
        let i = full.iter().position(|a| *a == drop).expect("option");
        let args: Vec<&str> =
            ["hold", "place"].into_iter().chain(full.iter().enumerate().filter(|(j, _)| *j != i && *j != i + 1).map(|(_, a)| *a)).collect();
        let out = camvault(dir.path()).args(&args).env("CAMVAULT_TOKEN", "cvt_x").output().expect("run");
        assert_usage_error(&out, drop);
    }
    // export needs its range too, and --last stands for both ends, not beside them.
    let export = ["export", "--camera", "c", "--out", "o.mp4", "--purpose", "p"];
    let with = |extra: &[&str]| camvault(dir.path()).args(export).args(extra).env("CAMVAULT_TOKEN", "cvt_x").output().expect("run");
    assert_usage_error(&with(&["--from", "-1h"]), "--to");
    assert_usage_error(&with(&["--last", "1h", "--from", "-1h"]), "--last");
    // A client verb without a token says where one comes from.
    assert_usage_error(&run(dir.path(), &["camera", "list"]), "--token");
}

#[test]
fn the_tokens_environment_value_is_hidden_in_help() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = camvault(dir.path()).args(["camera", "list", "--help"]).env("CAMVAULT_TOKEN", "cvt_secret_in_env").output().expect("run");
    let help = text(&out.stdout);
    assert!(help.contains("CAMVAULT_TOKEN") && help.contains("CAMVAULT_SERVER"), "{help}");
    assert!(!help.contains("cvt_secret_in_env"), "{help}");
}

// ---------------------------------------------------------------------------------------------
// Configuration precedence

#[test]
fn flags_override_the_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file_port, flag_port) = (free_port(), free_port());
    let config = dir.path().join("camvault.toml");
    let file_data = dir.path().join("data-from-file");
    let flag_data = dir.path().join("data-from-flag");
    std::fs::write(
        &config,
        format!("data_dir = {:?}\nlisten = \"127.0.0.1:{file_port}\"\nmetrics_listen = \"\"\n", file_data.to_str().expect("utf8")),
    )
    .expect("config");
    let s = serve(
        dir.path(),
        flag_port,
        &[
            "--config",
            config.to_str().expect("utf8"),
            "--listen",
            &format!("127.0.0.1:{flag_port}"),
            "--data",
            flag_data.to_str().expect("utf8"),
        ],
        &[],
    );
    assert!(!listening(file_port), "the file's listen address was overridden");
    assert!(flag_data.join("server").is_dir(), "the store is where --data says");
    assert!(!file_data.exists(), "nothing in the file's data_dir");
    let log = s.log();
    assert!(log.contains("--listen") && log.contains("overrides listen"), "each override is logged: {log}");
    assert!(log.contains("--data") && log.contains("overrides data_dir"), "{log}");
    // The file's settings that no flag names still hold: metrics are off.
    assert!(!log.contains("Prometheus metrics"), "{log}");
}

#[test]
fn demo_honours_key_dir_from_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys-elsewhere"));
    let config = dir.path().join("camvault.toml");
    std::fs::write(&config, format!("data_dir = {:?}\nkey_dir = {:?}\n", data.to_str().expect("utf8"), keys.to_str().expect("utf8")))
        .expect("config");
    let out = ok(run(dir.path(), &["demo", "--config", config.to_str().expect("utf8"), "--cameras", "1", "--seconds", "1"]));
    assert!(out.contains("1 demo cameras"), "{out}");
    assert!(std::fs::read_dir(&keys).expect("key_dir from the config").next().is_some(), "the keys are in key_dir");
    assert!(!data.join("keys").exists(), "no keys beside the segments");
}

// ---------------------------------------------------------------------------------------------
// Times

/// The two times of `hold list`'s line for a hold.
fn hold_range(list: &str, case: &str) -> (i64, i64) {
    let line = list.lines().find(|l| l.contains(case)).unwrap_or_else(|| panic!("hold {case} listed: {list}"));
    let range = line.split_whitespace().find(|w| w.contains("..")).expect("range");
    let (from, to) = range.split_once("..").expect("a..b");
    let us = |t: &str| camvault_server::time::parse_rfc3339(t).unwrap_or_else(|e| panic!("{e}"));
    (us(from), us(to))
}

#[test]
fn relative_times_parse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, admin) = fresh_server(dir.path());
    ok(client(dir.path(), &s, &admin, &["camera", "put", "--id", "cam-1", "--unit", "unit-1"]));
    const HOUR_US: i64 = 3_600_000_000;
    let place = |case: &str, range: &[&str]| {
        let mut args = vec!["hold", "place", "--case", case, "--cameras", "cam-1", "--reason", "test"];
        args.extend_from_slice(range);
        ok(client(dir.path(), &s, &admin, &args));
    };
    let before = camvault_server::now_us();
    place("REL", &["--from", "-2h", "--to", "now"]);
    place("LAST", &["--last", "30m"]);
    place("EQ", &["--from=-1h", "--to=+1h"]);
    let after = camvault_server::now_us();
    place("OFFSET", &["--from", "2026-11-23T15:00:00+07:00", "--to", "2026-11-23T09:00:00Z"]);
    let list = ok(client(dir.path(), &s, &admin, &["hold", "list"]));
    let (from, to) = hold_range(&list, "REL");
    assert_eq!(to - from, 2 * HOUR_US, "one `now` for both ends: {list}");
    assert!((before..=after).contains(&to), "--to now is now: {list}");
    let (from, to) = hold_range(&list, "LAST");
    assert_eq!(to - from, HOUR_US / 2);
    assert!((before..=after).contains(&to));
    let (from, to) = hold_range(&list, "EQ");
    assert_eq!(to - from, 2 * HOUR_US);
    assert_eq!(hold_range(&list, "OFFSET"), (1_795_420_800_000_000, 1_795_424_400_000_000), "08:00Z .. 09:00Z");
    // What does not parse is a usage error naming the accepted forms, before any call.
    for bad in ["yesterday", "1h", "-1mo", "2026-11-23T08:00:00", "-1é"] {
        let out = client(
            dir.path(),
            &s,
            &admin,
            &["hold", "place", "--case", "BAD", "--cameras", "cam-1", "--from", bad, "--to", "now", "--reason", "r"],
        );
        assert_usage_error(&out, "RFC 3339");
    }
    // Reversed ends are refused, not sent.
    let out = client(
        dir.path(),
        &s,
        &admin,
        &["hold", "place", "--case", "REV", "--cameras", "cam-1", "--from", "now", "--to", "-1h", "--reason", "r"],
    );
    assert!(!out.status.success() && text(&out.stderr).contains("not after"), "{}", text(&out.stderr));
    assert!(!ok(client(dir.path(), &s, &admin, &["hold", "list"])).contains("BAD"));
}

// ---------------------------------------------------------------------------------------------
// Offline checks under a trusted key

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn public_hex(k: &SigningKey) -> String {
    hex(k.verifying_key().as_bytes())
}

/// The fingerprint as documented: the first 16 hex digits of SHA-256 of the key, in fours.
fn fingerprint(k: &SigningKey) -> String {
    use sha2::Digest;
    let d = hex(&sha2::Sha256::digest(k.verifying_key().as_bytes()));
    format!("{}:{}:{}:{}", &d[0..4], &d[4..8], &d[8..12], &d[12..16])
}

/// An export and its manifest file as `camvault export` writes them, signed by `signer`.
fn signed_export(dir: &Path, name: &str, bytes: &[u8], signer: &SigningKey) -> (PathBuf, PathBuf) {
    let file = dir.join(format!("{name}.mp4"));
    std::fs::write(&file, bytes).expect("file");
    let manifest = serde_json::json!({
        "type": "camvault-export-manifest",
        "version": 2,
        "digest_algorithm": "blake3",
        "file_digest": blake3::hash(bytes).to_hex().to_string(),
        "camera": "cam-1",
        "from_us": 0,
        "to_us": 1,
        "exported_by": "op",
        "requester": "court 7",
        "purpose": "evidence",
        "approval_ref": "",
    })
    .to_string();
    let doc = serde_json::json!({
        "manifest": manifest,
        "signature": hex(&signer.sign(manifest.as_bytes()).to_bytes()),
        "public_key": public_hex(signer),
    });
    let path = dir.join(format!("{name}.mp4.manifest.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).expect("json")).expect("manifest");
    (file, path)
}

fn verify(dir: &Path, file: &Path, manifest: &Path, extra: &[&str]) -> Output {
    camvault(dir).arg("verify-export").arg(file).arg(manifest).args(extra).output().expect("run")
}

#[test]
fn verify_export_without_a_trusted_key_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = key(1);
    let (file, manifest) = signed_export(dir.path(), "clip", b"video bytes", &server);
    let out = verify(dir.path(), &file, &manifest, &[]);
    assert!(!out.status.success(), "no OK without a trusted key");
    assert!(!text(&out.stdout).contains("OK"), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("no trusted key") && err.contains("--public-key") && err.contains("server-key --pin"),
        "says why and what to do: {err}"
    );
    // The control: the same files verify under the key the operator trusts.
    let out = ok(verify(dir.path(), &file, &manifest, &["--public-key", &public_hex(&server)]));
    assert!(out.starts_with("OK") && out.contains(&fingerprint(&server)), "{out}");
}

#[test]
fn verify_export_with_another_key_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, forger) = (key(1), key(2));
    // The finding: the file changed by one byte, its manifest re-signed by a fresh key.
    let (file, manifest) = signed_export(dir.path(), "forged", b"video bytes, one changed", &forger);
    for trust in [vec!["--public-key", &public_hex(&server)], vec![]] {
        let pinned = dir.path().join("pinned-key");
        std::fs::write(&pinned, format!("{}\n", public_hex(&server))).expect("pin");
        let out = camvault(dir.path())
            .arg("verify-export")
            .arg(&file)
            .arg(&manifest)
            .args(&trust)
            .env("CAMVAULT_TRUSTED_KEY", &pinned)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{trust:?}: {}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(err.contains(&fingerprint(&forger)) && err.contains(&fingerprint(&server)), "names both fingerprints: {err}");
        assert!(!text(&out.stdout).contains("OK"));
    }
    // A manifest altered after signing by the trusted key is caught as altered.
    let (file, manifest) = signed_export(dir.path(), "altered", b"video", &server);
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).expect("read")).expect("json");
    doc["manifest"] = doc["manifest"].as_str().expect("text").replace("court 7", "court 8").into();
    std::fs::write(&manifest, doc.to_string()).expect("write");
    let out = verify(dir.path(), &file, &manifest, &["--public-key", &public_hex(&server)]);
    assert!(!out.status.success() && text(&out.stderr).contains("altered"), "{}", text(&out.stderr));
    // A changed byte of the file under a good manifest is caught by the digest.
    let (file, manifest) = signed_export(dir.path(), "changed", b"video", &server);
    std::fs::write(&file, b"videO").expect("write");
    let out = verify(dir.path(), &file, &manifest, &["--public-key", &public_hex(&server)]);
    assert!(!out.status.success() && text(&out.stderr).contains("does not match"), "{}", text(&out.stderr));
}

/// A certificate file as `camvault decommission --out` writes it.
fn signed_certificate(dir: &Path, signer: &SigningKey, kind: &str) -> PathBuf {
    let document = serde_json::json!({ "type": kind, "version": 1, "volume": "/srv/v", "completed_us": 0, "actor": "admin",
        "reason": "retired", "keks_destroyed": [1], "segment_count": 0, "segments": [] })
    .to_string();
    let doc = serde_json::json!({
        "certificate_json": document,
        "signature": hex(&signer.sign(document.as_bytes()).to_bytes()),
        "public_key": public_hex(signer),
    });
    let path = dir.join(format!("cert-{}.json", public_hex(signer)));
    std::fs::write(&path, doc.to_string()).expect("write");
    path
}

#[test]
fn verify_certificate_trusts_only_the_trusted_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, forger) = (key(3), key(4));
    let cert = signed_certificate(dir.path(), &server, "camvault-erase-certificate");
    let check = |cert: &Path, extra: &[&str]| camvault(dir.path()).arg("verify-certificate").arg(cert).args(extra).output().expect("run");
    let out = ok(check(&cert, &["--public-key", &public_hex(&server)]));
    assert!(out.starts_with("OK") && out.contains("/srv/v"), "{out}");
    let out = check(&cert, &[]);
    assert!(!out.status.success() && text(&out.stderr).contains("no trusted key"), "{}", text(&out.stderr));
    let forged = signed_certificate(dir.path(), &forger, "camvault-erase-certificate");
    let out = check(&forged, &["--public-key", &public_hex(&server)]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains(&fingerprint(&forger)) && err.contains(&fingerprint(&server)), "{err}");
    // The same key signs manifests: a signed document of another kind is no certificate.
    let other = signed_certificate(dir.path(), &key(5), "camvault-export-manifest");
    let out = check(&other, &["--public-key", &public_hex(&key(5))]);
    assert!(!out.status.success() && text(&out.stderr).contains("not an erase certificate"), "{}", text(&out.stderr));
}

#[test]
fn server_key_pins_and_a_real_certificate_verifies_under_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, admin) = fresh_server(dir.path());
    let pinned = dir.path().join("conf").join("camvault").join("server-key");
    let with_pin = |args: &[&str]| {
        camvault(dir.path())
            .args(args)
            .env("CAMVAULT_SERVER", &s.url)
            .env("CAMVAULT_TOKEN", &admin)
            .env("CAMVAULT_TRUSTED_KEY", &pinned)
            .output()
            .expect("run")
    };
    let out = ok(with_pin(&["server-key"]));
    let field = |name: &str| out.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().last()).map(String::from);
    let (public, fp) = (field("public key").expect("key printed"), field("fingerprint").expect("fingerprint printed"));
    let bytes: [u8; 32] = storage_core::signing::unhex(&public).expect("64 hex digits");
    {
        use sha2::Digest;
        let d = hex(&sha2::Sha256::digest(bytes));
        assert_eq!(fp, format!("{}:{}:{}:{}", &d[0..4], &d[4..8], &d[8..12], &d[12..16]));
    }
    assert!(!pinned.exists(), "printing pins nothing");
    ok(with_pin(&["server-key", "--pin"]));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&pinned), 0o600);
        assert_eq!(mode(pinned.parent().expect("dir")), 0o700);
    }
    assert_eq!(std::fs::read_to_string(&pinned).expect("pinned").trim(), public);
    // A different key already pinned is not replaced silently.
    std::fs::write(&pinned, public_hex(&key(9))).expect("write");
    let out = with_pin(&["server-key", "--pin"]);
    assert!(!out.status.success() && text(&out.stderr).contains(&fingerprint(&key(9))) && text(&out.stderr).contains(&fp));
    ok(with_pin(&["server-key", "--pin", "--replace"]));
    // Any principal may fetch the key.
    let auditor = ok(client(dir.path(), &s, &admin, &["token", "create", "--name", "aud", "--unit", "u", "--roles", "auditor"]));
    assert!(ok(client(dir.path(), &s, auditor.trim(), &["server-key"])).contains(&public));
    // A real certificate (an empty store may be decommissioned), verified under the pin.
    let cert = dir.path().join("erase.json");
    let cert_s = cert.to_str().expect("utf8");
    assert_usage_error(&with_pin(&["decommission", "--reason", "retired", "--out", cert_s]), "--yes-destroy-all-keys");
    let out = ok(with_pin(&["decommission", "--reason", "retired", "--yes-destroy-all-keys", "--out", cert_s]));
    assert!(out.contains("erase certificate"), "{out}");
    let out = ok(with_pin(&["verify-certificate", cert_s]));
    assert!(out.starts_with("OK") && out.contains(&fp), "{out}");
    // Under another trusted key it fails, naming both.
    let out = with_pin(&["verify-certificate", cert_s, "--public-key", &public_hex(&key(9))]);
    assert!(!out.status.success() && text(&out.stderr).contains(&fp) && text(&out.stderr).contains(&fingerprint(&key(9))));
}

// ---------------------------------------------------------------------------------------------
// scrub

/// Every file under `root` with its length and modification time.
fn snapshot(root: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let m = e.metadata().expect("metadata");
            if m.is_dir() {
                dirs.push(e.path());
            } else {
                out.push((e.path(), m.len(), m.modified().expect("mtime")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn scrub_reads_a_store_and_reports_damage_without_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let d = data.to_str().expect("utf8");
    ok(run(dir.path(), &["demo", "--data", d, "--cameras", "2", "--seconds", "2"]));
    let before = snapshot(&data);
    let out = ok(run(dir.path(), &["scrub", "--data", d]));
    assert!(out.contains("0 damaged"), "{out}");
    assert_eq!(snapshot(&data), before, "scrub wrote nothing");
    // One flipped byte in a sealed segment is reported, and the exit status says so.
    let (seg, len, _) =
        before.iter().filter(|(p, _, _)| p.starts_with(data.join("segments"))).max_by_key(|(_, l, _)| *l).expect("a segment").clone();
    let mut bytes = std::fs::read(&seg).expect("segment");
    bytes[len as usize / 2] ^= 0x40;
    std::fs::write(&seg, bytes).expect("write");
    let before = snapshot(&data);
    let out = run(dir.path(), &["scrub", "--data", d]);
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("CORRUPT") && text(&out.stdout).contains("1 damaged"), "{}", text(&out.stdout));
    assert_eq!(snapshot(&data), before, "damage is reported, not repaired");
    // A directory that is not there is not created.
    let out = run(dir.path(), &["scrub", "--data", dir.path().join("typo").to_str().expect("utf8")]);
    assert!(!out.status.success() && !dir.path().join("typo").exists());
}

// ---------------------------------------------------------------------------------------------
// PKCS#11 in the server configuration (SoftHSM2)

const SOFTHSM_MODULES: [&str; 3] =
    ["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so"];

/// A SoftHSM2 token labelled `camvault-cli` with user PIN 1234 in `dir`; returns the module and
/// the SOFTHSM2_CONF file.
fn softhsm_token(dir: &Path) -> (PathBuf, PathBuf) {
    let module = SOFTHSM_MODULES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("SoftHSM2 is not installed (apt-get install softhsm2; .ci/run does)");
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("tokens dir");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(&conf, format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()))
        .expect("conf");
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "camvault-cli", "--pin", "1234", "--so-pin", "5678"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("run softhsm2-util");
    assert!(out.status.success(), "softhsm2-util: {}", text(&out.stderr));
    (module, conf)
}

#[test]
fn serve_keeps_its_keks_on_the_pkcs11_token_the_config_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (module, conf) = softhsm_token(dir.path());
    let data = dir.path().join("data");
    let config = dir.path().join("camvault.toml");
    let write_config = |pin_env: &str| {
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nmetrics_listen = \"\"\n[kek]\nprovider = \"pkcs11\"\nmodule = {:?}\ntoken_label = \"camvault-cli\"\npin_env = \"{pin_env}\"\n",
                data.to_str().expect("utf8"),
                module.to_str().expect("utf8")
            ),
        )
        .expect("config")
    };
    // A wrong PIN: refused at start-up, naming the token and never the PIN.
    write_config("CLI_TEST_HSM_PIN");
    let port = free_port();
    let out = camvault(dir.path())
        .args(["serve", "--config", config.to_str().expect("utf8"), "--listen", &format!("127.0.0.1:{port}")])
        .env("SOFTHSM2_CONF", &conf)
        .env("CLI_TEST_HSM_PIN", "98765")
        .output()
        .expect("run");
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("camvault-cli"), "{err}");
    assert!(!err.contains("98765") && !text(&out.stdout).contains("98765"), "the PIN is not shown: {err}");
    // The right PIN: the server runs with its KEKs on the token, none in files.
    let s = serve(
        dir.path(),
        port,
        &["--config", config.to_str().expect("utf8"), "--listen", &format!("127.0.0.1:{port}")],
        &[("SOFTHSM2_CONF", conf.to_str().expect("utf8")), ("CLI_TEST_HSM_PIN", "1234")],
    );
    assert!(s.admin.is_some(), "a fresh store on the HSM");
    assert!(s.log().contains("PKCS#11"), "{}", s.log());
    assert!(!s.log().contains("1234"), "{}", s.log());
    assert!(!data.join("kek").exists(), "no KEK files: the token holds them");
    let listed = ok(client(dir.path(), &s, s.admin.as_deref().unwrap_or_default(), &["camera", "list"]));
    assert!(listed.is_empty(), "{listed}");
}

/// Through the real server with its KEKs on a SoftHSM2 token: a store written 40 days ago
/// (under the token, by the library with a simulated clock) is served; new video is ingested;
/// a sweep crypto-erases the expired video, which rotates the key store onto a new KEK on the
/// token and destroys the old one there; after a restart, the new video exports and plays.
#[test]
fn serve_ingest_sweep_restart_and_export_with_keks_in_the_hsm() {
    use std::sync::Arc;
    use storage_core::keys::{KekProvider, Pkcs11KekProvider};
    const DAY_US: i64 = 86_400_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (module, conf) = softhsm_token(dir.path());
    let data = dir.path().join("data");
    // This test binary's only in-process PKCS#11 user: the module reads its configuration
    // from the environment when loaded.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let token = || Pkcs11KekProvider::open(&module, "camvault-cli", "1234", "camvault-kek-").expect("open the token");
    let now_us = camvault_server::now_us();
    let (old_kek, store_id) = {
        let hsm = Arc::new(token());
        let env = storage_core::Env {
            vfs: Arc::new(storage_core::io::StdVfs),
            clock: Arc::new(storage_core::SimClock::new(now_us - 40 * DAY_US)),
            kek: Some(hsm.clone()),
        };
        let store = storage_core::Store::open_with(storage_core::StoreConfig::new(&data), env).expect("a store on the token");
        let mut s = store.open_stream("cam-old", storage_core::Codec::H264, b"\0\0\0\x01\x67\x42").expect("stream");
        for n in 0..50 {
            let ts_us = now_us - 40 * DAY_US + n * 40_000;
            s.append(storage_core::FrameIn { ts_us, pts_90k: None, key: n % 25 == 0, payload: b"\0\0\0\x01\x65old" }).expect("append");
        }
        s.close().expect("seal");
        let keks = hsm.list_keks().expect("list KEKs");
        assert_eq!(keks.len(), 1, "one KEK wraps the key store: {keks:?}");
        (keks[0], store.id())
    };
    let config = dir.path().join("camvault.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nmetrics_listen = \"\"\n[kek]\nprovider = \"pkcs11\"\nmodule = {:?}\ntoken_label = \"camvault-cli\"\npin_env = \"HSM_PIN\"\n",
            data.to_str().expect("utf8"),
            module.to_str().expect("utf8")
        ),
    )
    .expect("config");
    let start = || {
        let port = free_port();
        serve(
            dir.path(),
            port,
            &["--config", config.to_str().expect("utf8"), "--listen", &format!("127.0.0.1:{port}")],
            &[("SOFTHSM2_CONF", conf.to_str().expect("utf8")), ("HSM_PIN", "1234")],
        )
    };
    let s = start();
    let admin = s.admin.clone().expect("the server's state is new: it prints its first admin token");
    let clip = dir.path().join("clip.mp4");
    let ff = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-t", "2", "-pix_fmt", "yuv420p"])
        .args(["-c:v", "libx264", "-g", "25", clip.to_str().expect("utf8")])
        .output()
        .expect("ffmpeg is installed (apt-get install ffmpeg; .ci/run does)");
    assert!(ff.status.success(), "ffmpeg: {}", text(&ff.stderr));
    ok(client(dir.path(), &s, &admin, &["camera", "put", "--id", "cam-new", "--unit", "unit-1"]));
    ok(client(dir.path(), &s, &admin, &["camera", "put", "--id", "cam-old", "--unit", "unit-1"]));
    let t0 = "2026-01-01T00:00:00Z";
    let from = (now_us - 60_000_000) / 1_000_000;
    let start_at = jiff::Timestamp::from_second(from).expect("time").to_string();
    let new_token = |args: &[&str]| {
        let made = ok(client(dir.path(), &s, &admin, &[&["token", "create", "--unit", "unit-1"][..], args].concat()));
        made.split_whitespace().find(|w| w.starts_with("cvt_")).expect("the new token").to_string()
    };
    let edge = new_token(&["--name", "edge", "--roles", "ingest", "--cameras", "cam-new"]);
    let operator = new_token(&["--name", "op", "--roles", "operator"]);
    ok(client(dir.path(), &s, &edge, &["ingest", clip.to_str().expect("utf8"), "--camera", "cam-new", "--fast", "--start", &start_at]));
    // The sweep erases the 40-day-old segment: its key leaves the key store, which is
    // rewritten under a new KEK created on the token, and the old KEK is destroyed there.
    let swept = ok(client(dir.path(), &s, &admin, &["retention", "sweep"]));
    assert!(swept.contains("erased 1"), "{swept}");
    let old = ok(client(dir.path(), &s, &operator, &["recordings", "--camera", "cam-old", "--from", t0, "--to", "now"]));
    assert!(!old.contains("frames"), "the expired video is gone: {old}");
    drop(s);
    let hsm = token();
    hsm.bind_store(store_id).expect("the store's KEKs on the token");
    let keks = hsm.list_keks().expect("list KEKs");
    assert_eq!(keks.len(), 1, "the new KEK alone: {keks:?}");
    assert_ne!(keks[0], old_kek, "the KEK of the erased segment's key store is destroyed on the token");
    assert!(!data.join("kek").exists(), "no KEK file: the token holds them");
    drop(hsm);
    // Restarted, the server unwraps the new key store under the token's KEK and exports.
    let s = start();
    assert!(s.admin.is_none(), "the same server state");
    let out = dir.path().join("export.mp4");
    ok(client(
        dir.path(),
        &s,
        &operator,
        &[
            "export",
            "--camera",
            "cam-new",
            "--from",
            &start_at,
            "--to",
            "now",
            "--out",
            out.to_str().expect("utf8"),
            "--purpose",
            "hsm test",
        ],
    ));
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(&out)
        .output()
        .expect("ffprobe");
    assert_eq!(text(&probe.stdout).trim(), "50", "every ingested frame plays: {}", text(&probe.stderr));
}

/// Finding 9 of the operator issue: a login is audited once per token and address in an
/// hour, however many TCP connections the token opens (each `camvault` run is one).
#[test]
fn a_login_is_audited_once_per_token_and_period_not_per_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, admin) = fresh_server(dir.path());
    let made = ok(client(dir.path(), &s, &admin, &["token", "create", "--name", "viewer-1", "--unit", "unit-1", "--roles", "operator"]));
    let viewer = made.split_whitespace().find(|w| w.starts_with("cvt_")).expect("the new token").to_string();
    for _ in 0..5 {
        ok(client(dir.path(), &s, &viewer, &["camera", "list"]));
    }
    let made = ok(client(dir.path(), &s, &admin, &["token", "create", "--name", "auditor-1", "--unit", "unit-1", "--roles", "auditor"]));
    let auditor = made.split_whitespace().find(|w| w.starts_with("cvt_")).expect("the new token").to_string();
    let logins = ok(client(dir.path(), &s, &auditor, &["audit", "query", "--action", "login", "--actor", "viewer-1"]));
    assert_eq!(logins.lines().count(), 1, "five connections, one login entry: {logins}");
    let entry: serde_json::Value = serde_json::from_str(logins.trim()).expect("a JSON entry");
    assert!(entry["detail"]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "the entry names the peer: {entry}");
}
