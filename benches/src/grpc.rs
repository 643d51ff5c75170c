//! Through the server: the real `camvault` server process on loopback, driven by this process
//! as a gRPC client (ingest), and export of a clip against reading its ciphertext raw.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use camvault_server::proto;
use tonic::transport::Channel;
use tonic::Request;

use crate::{cpu_seconds, dir_bytes, rss_bytes, verify_engine, RunResult, Scenario};

/// HTTP/2 connections the client spreads its publish calls over, as a gateway forwarding many
/// cameras would: one connection is one socket and one connection task on each side, which
/// capped 64 streams at 0.65-0.67 of the engine against 0.72-0.78 over eight; more than eight
/// cost CPU per byte where CPU is the bound (2,000 streams: 0.48-0.58 over sixteen, 0.60 over
/// eight). More are opened where the server's per-connection call limit requires.
const CONNECTIONS: usize = 8;

/// Connections for `streams` concurrent publish calls: [`CONNECTIONS`], fewer for fewer
/// streams, more where the server's limit of calls per connection needs them.
pub fn connections_for(streams: usize) -> usize {
    CONNECTIONS.min(streams).max(streams.div_ceil(camvault_server::server::CALLS_PER_CONNECTION_MAX)).max(1)
}
/// Longest wait for every stream's first frame to be durable before the clock starts.
const PRIMING_TIMEOUT: Duration = Duration::from_secs(120);

/// Parameter sets (Annex B SPS + PPS) of a 1920x1080 Constrained Baseline x264 stream: the
/// server parses them at OpenStream, as export depends on them.
pub const H264_1080P_CONFIG: &[u8] = &[
    0x00, 0x00, 0x00, 0x01, 0x67, 0x42, 0xc0, 0x28, 0xda, 0x01, 0xe0, 0x08, 0x9f, 0x97, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00,
    0x00, 0x03, 0x03, 0x20, 0xf1, 0x83, 0x2a, 0x00, 0x00, 0x00, 0x01, 0x68, 0xce, 0x0f, 0xc8,
];

/// A running `camvault serve` with a fresh data directory.
pub struct ServerProcess {
    child: Child,
    port: u16,
    /// The first administrator token, printed once by the server.
    pub admin: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `camvault` binary: `CAMVAULT_BIN`, else beside this executable (cargo puts both in
/// `target/<profile>/`).
pub fn server_binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("CAMVAULT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe.with_file_name("camvault");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("{} not found: build it with `cargo build --release -p camvault-server` or set CAMVAULT_BIN", bin.display()))
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

impl ServerProcess {
    /// Starts the server on a free loopback port and waits until it accepts connections.
    pub fn start(bin: &Path, data: &Path) -> Result<ServerProcess, String> {
        let port = free_port()?;
        let mut child = Command::new(bin)
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics", ""])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let admin = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(t) = line.split_whitespace().find(|w| w.starts_with("cvt_")) {
                        break t.to_string();
                    }
                }
                _ => return Err("the server exited before printing its first admin token".into()),
            }
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("the server did not start listening within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(ServerProcess { child, port, admin })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// CPU seconds the server process has used.
    pub fn cpu_seconds(&self) -> f64 {
        crate::cpu_seconds_of(&format!("/proc/{}/stat", self.child.id()))
    }

    /// SIGTERM, then waits for the server to seal its streams and exit.
    pub fn stop(mut self) -> Result<(), String> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().map_err(|e| format!("kill: {e}"))?;
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("the server exited with {status}"))
        }
    }
}

fn authed<T>(msg: T, token: &str) -> Result<Request<T>, String> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().map_err(|_| "token is not a header value")?);
    Ok(r)
}

async fn connect(url: &str) -> Result<Channel, String> {
    // The `camvault` client's settings: windows and frames sized for video.
    camvault_server::conn::client_endpoint(Channel::from_shared(url.to_string()).map_err(|e| e.to_string())?)
        .connect()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))
}

/// Registers `cameras` in the administrator's unit and issues an ingest token for them.
async fn setup(url: &str, admin: &str, cameras: &[String]) -> Result<String, String> {
    let ch = connect(url).await?;
    let mut catalog = proto::catalog_client::CatalogClient::new(ch.clone());
    for id in cameras {
        let camera = proto::Camera { id: id.clone(), owning_unit: "provincial-centre".into(), ..Default::default() };
        catalog
            .put_camera(authed(proto::PutCameraRequest { camera: Some(camera) }, admin)?)
            .await
            .map_err(|e| format!("PutCamera: {e}"))?;
    }
    let principal = proto::Principal {
        name: "bench-ingest".into(),
        unit: "provincial-centre".into(),
        roles: vec!["ingest".into()],
        sectors: vec![],
        cameras: cameras.to_vec(),
    };
    let t = proto::admin_client::AdminClient::new(ch)
        .create_token(authed(proto::CreateTokenRequest { principal: Some(principal) }, admin)?)
        .await
        .map_err(|e| format!("CreateToken: {e}"))?;
    Ok(t.into_inner().token)
}

/// Publishes `frames` (capture time, presentation time in 90 kHz, key, payload) on one H.264
/// stream with parameter sets `config`, as fast as the server takes them; returns the final
/// durable sequence number.
async fn publish(
    ch: Channel,
    token: String,
    camera: String,
    config: Vec<u8>,
    frames: impl Iterator<Item = (i64, i64, bool, Bytes)> + Send + 'static,
    gate: Option<Gate>,
) -> Result<u64, String> {
    use proto::publish_request::Msg;
    use tokio_stream::StreamExt;
    // Recorded footage replayed as fast as it goes: a backfill.
    let open = proto::OpenStream { camera, codec: Some(proto::CodecConfig { codec: proto::Codec::H264 as i32, config }), backfill: true };
    let request = |m| proto::PublishRequest { msg: Some(m) };
    let mut frames =
        frames.map(move |(ts_us, pts_90k, key, payload)| request(Msg::Frame(proto::Frame { ts_us, pts_90k: Some(pts_90k), key, payload })));
    // The call's messages come straight from the frame iterator as tonic's encoder asks for
    // them: no channel and no sending task per stream, which cost the load generator CPU per
    // frame on the cores the server uses.
    let mut head = vec![request(Msg::Open(open))];
    // With a gate, the first frame goes alone: once it is durable (its segment exists) the
    // stream is set up, as the engine's are before its clock; the rest waits for the clock.
    let (set_up, mut set_up_rx) = tokio::sync::watch::channel(gate.is_none());
    if gate.is_some() {
        head.push(frames.next().ok_or("a stream needs at least one frame")?);
    }
    let clock_rx = set_up_rx.clone();
    let wait_for_clock = tokio_stream::once(()).then(move |()| {
        let mut set_up_rx = clock_rx.clone();
        let gate = gate.clone();
        async move {
            let _ = set_up_rx.wait_for(|&s| s).await;
            if let Some(gate) = gate {
                gate.primed.wait().await;
                let mut go = gate.go;
                let _ = go.wait_for(|&go| go).await;
            }
        }
    });
    let messages =
        tokio_stream::iter(head).chain(wait_for_clock.filter_map(|()| None::<proto::PublishRequest>)).chain(tokio_stream::iter(frames));
    let mut client = proto::ingest_client::IngestClient::new(ch).max_encoding_message_size(camvault_server::server::MESSAGE_BYTES_MAX);
    let mut acks = client.publish(authed(messages, &token)?).await.map_err(|e| e.to_string())?.into_inner();
    let mut durable = 0;
    while let Some(a) = acks.message().await.map_err(|e| e.to_string())? {
        durable = a.durable_seq;
        if durable >= 1 {
            set_up.send_if_modified(|s| !std::mem::replace(s, true));
        }
    }
    if !*set_up_rx.borrow_and_update() {
        return Err("the server ended the stream before its first ack".into());
    }
    Ok(durable)
}

/// Holds every stream after its set-up until the clock starts.
#[derive(Clone)]
struct Gate {
    /// Every stream and the clock's owner wait here once the stream's first frame is durable.
    primed: Arc<tokio::sync::Barrier>,
    /// Turns true when the clock has started.
    go: tokio::sync::watch::Receiver<bool>,
}

/// Opens a store the server has stopped using, without its retention sweeper.
fn open_stopped_store(data: &Path) -> Result<storage_core::Store, String> {
    let mut cfg = storage_core::StoreConfig::new(data);
    cfg.sweep_interval = None;
    storage_core::Store::open(cfg).map_err(|e| format!("cannot open the server's store: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())
}

/// The scenario over gRPC: one publish call per stream, all concurrent, unpaced. The clock
/// stops when every stream's final acknowledgement says all its frames are sealed and durable;
/// then the server is stopped and every frame is read back from its store.
///
/// Returns the run (CPU of both processes) and the server process's CPU seconds alone.
pub fn run_grpc_ingest(bin: &Path, dir: &Path, sc: &Scenario, payload: &[u8]) -> Result<(RunResult, f64), String> {
    let data = dir.join("data");
    let server = ServerProcess::start(bin, &data)?;
    let cameras: Vec<String> = (0..sc.streams).map(|i| format!("cam-{i:05}")).collect();
    let rt = runtime()?;
    let url = server.url();
    let frames_per_stream = u64::from(sc.seconds) * u64::from(sc.profile.fps);
    // Recent capture times: the server's retention sweep would erase video older than 30 days.
    let t0 = camvault_server::now_us() - i64::from(sc.seconds) * 1_000_000 - 60_000_000;
    let token = rt.block_on(setup(&url, &server.admin, &cameras))?;
    let primed = Arc::new(tokio::sync::Barrier::new(sc.streams + 1));
    let (go, go_rx) = tokio::sync::watch::channel(false);
    let (durable, start, rss0, server_cpu0, cpu0) = rt.block_on(async {
        let mut channels = Vec::new();
        let connections = connections_for(sc.streams);
        for _ in 0..connections {
            channels.push(connect(&url).await?);
        }
        let mut tasks = Vec::with_capacity(sc.streams);
        // Frames are slices of one shared buffer: the client copies a payload only into the
        // HTTP/2 send buffer, as a camera gateway forwarding received frames would.
        let shared = Bytes::copy_from_slice(payload);
        for (i, camera) in cameras.iter().enumerate() {
            let profile = sc.profile;
            let payload = shared.clone();
            let frames = (0..frames_per_stream).map(move |n| {
                let (size, key) = profile.frame_bytes(n, (i % 25) as u32);
                (t0 + n as i64 * profile.frame_us(), n as i64 * 3600, key, payload.slice(..size))
            });
            let ch = channels[i % connections].clone();
            let gate = Gate { primed: primed.clone(), go: go_rx.clone() };
            tasks.push(tokio::spawn(publish(ch, token.clone(), camera.clone(), H264_1080P_CONFIG.to_vec(), frames, Some(gate))));
        }
        // Every stream's first frame is durable (its segment exists): the clock starts here, as
        // the engine's does after its streams' first frames.
        // A stream that failed before its first ack never arrives: bounded, not a hang.
        tokio::time::timeout(PRIMING_TIMEOUT, primed.wait())
            .await
            .map_err(|_| format!("not every stream was set up within {} s (a publish call failed?)", PRIMING_TIMEOUT.as_secs()))?;
        // The page cache is the kernel's: warm pages freed here serve the server's writes too.
        crate::start_line(&data, sc.nominal_bytes());
        let rss0 = rss_bytes();
        let server_cpu0 = server.cpu_seconds();
        let cpu0 = cpu_seconds() + server_cpu0;
        let start = Instant::now();
        go.send(true).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.map_err(|e| e.to_string())??);
        }
        Ok::<_, String>((out, start, rss0, server_cpu0, cpu0))
    })?;
    let elapsed = start.elapsed();
    let server_cpu = server.cpu_seconds() - server_cpu0;
    let cpu = cpu_seconds() + server.cpu_seconds() - cpu0;
    let peak = rss_bytes();
    if let Some((i, d)) = durable.iter().enumerate().find(|(_, &d)| d != frames_per_stream) {
        return Err(format!("stream {i}: {d} of {frames_per_stream} frames acknowledged durable"));
    }
    server.stop()?;
    // The first frames went before the clock.
    let payload_bytes: u64 =
        (0..sc.streams).map(|i| (1..frames_per_stream).map(|n| sc.profile.frame_bytes(n, (i % 25) as u32).0 as u64).sum::<u64>()).sum();
    let store = open_stopped_store(&data)?;
    let verified = verify_engine(&store, sc, payload, t0).map_err(|e| e.to_string())?;
    drop(store);
    let run = RunResult {
        payload_bytes,
        disk_bytes: dir_bytes(&data.join("segments")),
        elapsed,
        frames: frames_per_stream * sc.streams as u64,
        rss_per_stream: peak.saturating_sub(rss0) / sc.streams as u64,
        verified_frames: verified,
        cpu_s: cpu,
        connect: Duration::ZERO,
        close: Duration::ZERO,
    };
    Ok((run, server_cpu))
}

/// One export of the clip over gRPC.
#[derive(Debug, Clone, Copy)]
pub struct ExportRun {
    /// The manifest's digest algorithm.
    pub digest: &'static str,
    /// Bytes of the MP4 the export produced.
    pub mp4_bytes: u64,
    /// From the request to the signed manifest; page cache dropped first when cold.
    pub elapsed: Duration,
    /// CPU seconds of the server process, and of the receiving client.
    pub cpu_s: (f64, f64),
}

/// Digests the export figure runs with: the default first.
pub const EXPORT_DIGESTS: [&str; 2] = ["blake3", "sha256"];

/// One clip's export against raw reads of its ciphertext.
#[derive(Debug, Clone)]
pub struct ExportResult {
    /// Seconds of video in the clip.
    pub seconds: u32,
    /// Bytes of the clip's segment files (ciphertext, framing, sidecars excluded).
    pub segment_bytes: u64,
    /// Exports over gRPC, one per digest of [`EXPORT_DIGESTS`].
    pub exports: Vec<ExportRun>,
    /// `cat` of the same segment files; page cache dropped first when `cold`.
    pub raw_read: Duration,
    /// The library's decrypting reader over the same range, same cache state.
    pub engine_read: Duration,
    /// Whether the page cache was dropped before each read (asked for, and root).
    pub cold: bool,
    /// CPU seconds of the raw read and of the library read.
    pub read_cpu_s: (f64, f64),
}

/// Drops the page cache (needs root); false where it cannot.
pub fn drop_caches() -> bool {
    // Dirty pages first: drop_caches leaves them.
    Command::new("sync").status().is_ok_and(|s| s.success()) && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(segment_files(&p));
            } else if p.extension().is_some_and(|x| x == "seg") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Access units of an encoded clip in decode order, each with its key-frame flag.
pub type Clip = Vec<(bool, Vec<u8>)>;

/// Encodes `seconds` of 1080p H.264 at a constant 4 Mbit/s, 25 fps, 1 s GOP, no B-frames with
/// ffmpeg: the parameter sets and the access units with their key flags.
pub fn encode_clip(dir: &Path, seconds: u32) -> Result<(Vec<u8>, Clip), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let out = dir.join("clip.h264");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=25", "-t", &seconds.to_string()])
        .args(["-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-g", "25"])
        .args(["-b:v", "4M", "-minrate", "4M", "-maxrate", "4M", "-bufsize", "2M", "-x264-params", "nal-hrd=cbr:force-cfr=1", "-f", "h264"])
        .arg(&out)
        .status()
        .map_err(|e| format!("ffmpeg (Debian package ffmpeg) is needed for the export figure: {e}"))?;
    if !status.success() {
        return Err(format!("ffmpeg failed: {status}"));
    }
    let data = std::fs::read(&out).map_err(|e| e.to_string())?;
    let (aus, config) = camvault_server::h26x::access_units(storage_core::Codec::H264, &data);
    if aus.is_empty() || config.is_empty() {
        return Err("ffmpeg's output holds no access units".into());
    }
    Ok((config, aus.into_iter().map(|a| (a.key, a.data)).collect()))
}

/// Ingests `seconds` of one camera's real encoded video (`clip`: Annex B access units and their
/// key flags, looped; capture times at `fps`), then exports it as MP4 over gRPC and reads the
/// same segment files raw and through the library.
pub fn run_export(
    bin: &Path,
    dir: &Path,
    config: &[u8],
    clip: &[(bool, Vec<u8>)],
    fps: u32,
    seconds: u32,
    cold: bool,
) -> Result<ExportResult, String> {
    let data = dir.join("data");
    let server = ServerProcess::start(bin, &data)?;
    let rt = runtime()?;
    let url = server.url();
    let camera = "export-cam".to_string();
    let token = rt.block_on(setup(&url, &server.admin, std::slice::from_ref(&camera)))?;
    let frame_us = 1_000_000 / i64::from(fps);
    let frames = u64::from(seconds) * u64::from(fps);
    let t0 = camvault_server::now_us() - i64::from(seconds) * 1_000_000 - 60_000_000;
    let clip_owned: Vec<(bool, Bytes)> = clip.iter().map(|(k, au)| (*k, Bytes::copy_from_slice(au))).collect();
    let config = config.to_vec();
    let frames_of_clip = (0..frames).map(move |n| {
        let (key, au) = &clip_owned[(n % clip_owned.len() as u64) as usize];
        (t0 + n as i64 * frame_us, n as i64 * 90_000 / i64::from(fps), *key, au.clone())
    });
    let durable = rt.block_on(async { publish(connect(&url).await?, token, camera.clone(), config, frames_of_clip, None).await })?;
    if durable != frames {
        return Err(format!("export clip: {durable} of {frames} frames acknowledged durable"));
    }
    let files = segment_files(&data.join("segments"));
    let segment_bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let to_us = t0 + frames as i64 * frame_us;
    let drop_if_cold = || cold && drop_caches();
    let mut exports = Vec::new();
    let mut cold = cold;
    // The receiving client on one thread, as the `camvault` CLI's is: its connection and the
    // call reading the stream then share that thread, instead of waking each other across
    // threads once per chunk on cores the server needs.
    let export_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    for digest in EXPORT_DIGESTS {
        cold = drop_if_cold();
        let (server_cpu0, client_cpu0) = (server.cpu_seconds(), cpu_seconds());
        let start = Instant::now();
        let mp4_bytes = export_rt.block_on(async {
            let mut c = proto::export_client::ExportClient::new(connect(&url).await?)
                .max_decoding_message_size(camvault_server::server::MESSAGE_BYTES_MAX);
            let access = proto::Access { purpose: "benchmark: export throughput".into(), ..Default::default() };
            let req = proto::ExportRequest { camera: camera.clone(), from_us: t0, to_us, access: Some(access), digest: digest.into() };
            let mut s = c.export_clip(authed(req, &server.admin)?).await.map_err(|e| format!("ExportClip: {e}"))?.into_inner();
            let mut bytes = 0u64;
            let mut manifest = None;
            while let Some(chunk) = s.message().await.map_err(|e| format!("ExportClip: {e}"))? {
                match chunk.part {
                    Some(proto::export_chunk::Part::Mp4(b)) => bytes += b.len() as u64,
                    Some(proto::export_chunk::Part::Manifest(m)) => manifest = Some(m),
                    None => {}
                }
            }
            let m = manifest.ok_or("the export ended without its signed manifest")?;
            let json: serde_json::Value = serde_json::from_str(&m.json).map_err(|e| format!("manifest: {e}"))?;
            if json["digest_algorithm"] != digest {
                return Err(format!("asked for a {digest} manifest, got {}", json["digest_algorithm"]));
            }
            Ok::<_, String>(bytes)
        })?;
        let elapsed = start.elapsed();
        let cpu_s = (server.cpu_seconds() - server_cpu0, cpu_seconds() - client_cpu0);
        exports.push(ExportRun { digest, mp4_bytes, elapsed, cpu_s });
    }
    // A single-threaded runtime runs its connections' tasks only inside `block_on`: dropped, it
    // closes them, and the server's graceful stop does not wait out its grace period for them.
    drop(export_rt);
    drop(rt);
    server.stop()?;
    drop_if_cold();
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    for f in &files {
        let mut file = std::fs::File::open(f).map_err(|e| e.to_string())?;
        while file.read(&mut buf).map_err(|e| e.to_string())? > 0 {}
    }
    let raw_read = start.elapsed();
    let raw_cpu_s = cpu_seconds() - cpu0;
    let store = open_stopped_store(&data)?;
    drop_if_cold();
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let mut read_frames = 0u64;
    for item in store.read(&camera, t0, to_us).map_err(|e| e.to_string())? {
        if let storage_core::ReadItem::Frame(_) = item.map_err(|e| e.to_string())? {
            read_frames += 1;
        }
    }
    let engine_read = start.elapsed();
    let read_cpu_s = (raw_cpu_s, cpu_seconds() - cpu0);
    if read_frames != frames {
        return Err(format!("export clip: read back {read_frames} of {frames} frames"));
    }
    Ok(ExportResult { seconds, segment_bytes, exports, raw_read, engine_read, cold, read_cpu_s })
}
