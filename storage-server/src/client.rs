//! The client verbs of `camvault`: gRPC calls with a bearer token, plus the offline checks
//! `verify-export` and `verify-certificate`, which trust only a key the operator trusts.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use camvault_server::server::key_fingerprint;
use camvault_server::time::{format_rfc3339, parse_duration_us, TimeArg};
use camvault_server::{h26x, proto};

/// What the time options accept, for `--help`.
const TIME_HELP: &str = "RFC 3339 (2026-11-23T08:00:00Z, 2026-11-23T15:00:00+07:00), `now`, or relative to now (-1h, -30m, -2d)";

/// Highest `--fps` accepted: CCTV cameras run at 60-120 fps at most; more is a typo, and frame
/// times are whole microseconds.
const FPS_MAX: u32 = 1000;

/// The verbs that talk to a server, and the offline checks.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Publish an Annex B (.h264/.h265) or .mp4 file as a camera's stream; acknowledged only
    /// when durable
    Ingest(IngestArgs),
    /// List the recorded spans of a camera
    Recordings(RecordingsArgs),
    /// Read a camera's frames (audited with its purpose), or follow it live
    Play(PlayArgs),
    /// Export a clip as MP4 with a signed manifest (audited with its purpose)
    Export(ExportArgs),
    /// Legal holds: place, release, list
    #[command(subcommand)]
    Hold(HoldCommand),
    /// Retention: get, set, sweep
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// The audit log: query, verify
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The camera registry: put, list, health
    #[command(subcommand)]
    Camera(CameraCommand),
    /// Access tokens: create, revoke, list
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the server's signing key and its fingerprint; --pin trusts it for the offline checks
    ServerKey(ServerKeyArgs),
    /// Destroy every key of the volume and remove its video; writes the signed erase certificate
    Decommission(DecommissionArgs),
    /// Check an exported file against its signed manifest, offline, under a trusted key
    VerifyExport(VerifyExportArgs),
    /// Check a decommission's erase certificate, offline, under a trusted key
    VerifyCertificate(VerifyCertificateArgs),
}

/// How to reach the server. Each option may come from its environment variable instead.
#[derive(Args, Debug)]
pub struct Conn {
    /// Server address: http://HOST:PORT, or https:// with --ca
    #[arg(long, env = "CAMVAULT_SERVER", value_name = "URL", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// Bearer token (cvt_...); prefer the environment variable, which `ps` does not show
    #[arg(long, env = "CAMVAULT_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: String,
    /// CA certificate (PEM) the server's certificate must chain to; turns TLS on
    #[arg(long, env = "CAMVAULT_CA", value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS
    #[arg(long, env = "CAMVAULT_CERT", value_name = "PEM", requires_all = ["key", "ca"])]
    cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS
    #[arg(long, env = "CAMVAULT_KEY", value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
}

/// A time range whose ends are both optional.
#[derive(Args, Debug)]
pub struct Window {
    /// Start of the range [default: the beginning]
    #[arg(long, value_name = "TIME", allow_hyphen_values = true, long_help = format!("Start of the range: {TIME_HELP} [default: the beginning]"))]
    from: Option<TimeArg>,
    /// End of the range [default: open]
    #[arg(long, value_name = "TIME", allow_hyphen_values = true, long_help = format!("End of the range: {TIME_HELP} [default: open]"))]
    to: Option<TimeArg>,
    /// The last DURATION up to now (30m, 2h, 1d), instead of --from and --to
    #[arg(long, value_name = "DURATION", conflicts_with_all = ["from", "to"], value_parser = parse_duration_us)]
    last: Option<i64>,
}

/// A time range with both ends required (or --last).
#[derive(Args, Debug)]
pub struct ClosedWindow {
    /// Start of the range (see --help for the forms)
    #[arg(long, value_name = "TIME", allow_hyphen_values = true, required_unless_present = "last", long_help = format!("Start of the range: {TIME_HELP}"))]
    from: Option<TimeArg>,
    /// End of the range (see --help for the forms)
    #[arg(long, value_name = "TIME", allow_hyphen_values = true, required_unless_present = "last", long_help = format!("End of the range: {TIME_HELP}"))]
    to: Option<TimeArg>,
    /// The last DURATION up to now (30m, 2h, 1d), instead of --from and --to
    #[arg(long, value_name = "DURATION", conflicts_with_all = ["from", "to"], value_parser = parse_duration_us)]
    last: Option<i64>,
}

/// A time range with a required start and an optional end (a live follow has none).
#[derive(Args, Debug)]
pub struct OpenWindow {
    /// Start of the range (see --help for the forms)
    #[arg(long, value_name = "TIME", allow_hyphen_values = true, required_unless_present = "last", long_help = format!("Start of the range: {TIME_HELP}"))]
    from: Option<TimeArg>,
    /// End of the range [default: open]
    #[arg(long, value_name = "TIME", allow_hyphen_values = true, long_help = format!("End of the range: {TIME_HELP} [default: open]"))]
    to: Option<TimeArg>,
    /// The last DURATION up to now (30m, 2h, 1d), instead of --from and --to
    #[arg(long, value_name = "DURATION", conflicts_with_all = ["from", "to"], value_parser = parse_duration_us)]
    last: Option<i64>,
}

/// `(from_us, to_us)` of a range, relative times taken from one `now`; an end not given is
/// `open_from_us` / `open_to_us` (what the API reads as "no bound").
fn range(
    from: Option<TimeArg>,
    to: Option<TimeArg>,
    last_us: Option<i64>,
    open_from_us: i64,
    open_to_us: i64,
) -> Result<(i64, i64), String> {
    let now_us = camvault_server::now_us();
    if let Some(last) = last_us {
        return Ok((now_us.saturating_sub(last), now_us));
    }
    let from_us = from.map_or(open_from_us, |t| t.resolve(now_us));
    let to_us = to.map_or(open_to_us, |t| t.resolve(now_us));
    if from.is_some() && to.is_some() && to_us <= from_us {
        return Err(format!("--to {} is not after --from {}", format_rfc3339(to_us), format_rfc3339(from_us)));
    }
    Ok((from_us, to_us))
}

impl Window {
    fn resolve(&self) -> Result<(i64, i64), String> {
        range(self.from, self.to, self.last, 0, 0)
    }
}

impl ClosedWindow {
    fn resolve(&self) -> Result<(i64, i64), String> {
        range(self.from, self.to, self.last, 0, i64::MAX)
    }
}

impl OpenWindow {
    fn resolve(&self) -> Result<(i64, i64), String> {
        range(self.from, self.to, self.last, 0, 0)
    }
}

/// Why an administrator reads video outside their unit (TN 6.2).
#[derive(ValueEnum, Clone, Copy, Debug)]
enum JustificationArg {
    /// No justification (reads within one's scope, or with --approval)
    None,
    /// An emergency command
    Emergency,
    /// Repair of a connection fault
    Repair,
    /// A written request; needs --document
    WrittenRequest,
}

/// What every read of video says about itself; all of it is audited.
#[derive(Args, Debug)]
pub struct AccessArgs {
    /// Why the video is read
    #[arg(long)]
    purpose: String,
    /// For whom (a person, a court, an agency)
    #[arg(long, value_name = "WHO", default_value = "", hide_default_value = true)]
    requester: String,
    /// Approval reference, needed to read outside one's scope (TN 8.1)
    #[arg(long, value_name = "REF", default_value = "", hide_default_value = true)]
    approval: String,
    /// An administrator's justification for another unit's video (TN 6.2)
    #[arg(long, value_enum, default_value = "none")]
    justification: JustificationArg,
    /// The written request's reference (with --justification written-request)
    #[arg(long, value_name = "REF", default_value = "", hide_default_value = true)]
    document: String,
}

impl AccessArgs {
    fn to_proto(&self) -> proto::Access {
        let justification = match self.justification {
            JustificationArg::None => proto::Justification::None,
            JustificationArg::Emergency => proto::Justification::EmergencyCommand,
            JustificationArg::Repair => proto::Justification::ConnectionFaultRepair,
            JustificationArg::WrittenRequest => proto::Justification::WrittenRequest,
        };
        proto::Access {
            purpose: self.purpose.clone(),
            requester: self.requester.clone(),
            approval_ref: self.approval.clone(),
            justification: justification as i32,
            document_ref: self.document.clone(),
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum CodecArg {
    /// H.264 / AVC
    #[value(alias = "avc")]
    H264,
    /// H.265 / HEVC
    #[value(alias = "hevc")]
    H265,
}

/// `camvault ingest`
#[derive(Args, Debug)]
pub struct IngestArgs {
    /// Annex B elementary stream (.h264, .h265, .hevc) or .mp4 / .mov
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Camera to publish to
    #[arg(long)]
    camera: String,
    /// Frame rate of an elementary stream (an .mp4 carries its own times)
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=i64::from(FPS_MAX)))]
    fps: u32,
    /// Send as fast as the server takes it instead of at the camera's pace
    #[arg(long)]
    fast: bool,
    /// Codec of an elementary stream [default: from the file name, else h264]
    #[arg(long, value_enum)]
    codec: Option<CodecArg>,
    /// Capture time of the first frame [default: now; with --fast, so that the file ends now].
    /// With --fast or --start the file is sent as a backfill of footage recorded earlier
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    start: Option<TimeArg>,
    #[command(flatten)]
    conn: Conn,
}

/// `camvault recordings`
#[derive(Args, Debug)]
pub struct RecordingsArgs {
    /// Camera whose recordings to list
    #[arg(long)]
    camera: String,
    #[command(flatten)]
    window: Window,
    #[command(flatten)]
    conn: Conn,
}

/// `camvault play`
#[derive(Args, Debug)]
pub struct PlayArgs {
    /// Camera to read
    #[arg(long)]
    camera: String,
    #[command(flatten)]
    window: OpenWindow,
    /// Keep reading live frames as they are recorded
    #[arg(long)]
    follow: bool,
    /// Print one line per frame
    #[arg(long)]
    verbose: bool,
    #[command(flatten)]
    access: AccessArgs,
    #[command(flatten)]
    conn: Conn,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum DigestArg {
    /// BLAKE3 (check with b3sum)
    Blake3,
    /// SHA-256 (check with sha256sum)
    Sha256,
}

/// `camvault export`
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Camera to export
    #[arg(long)]
    camera: String,
    #[command(flatten)]
    window: ClosedWindow,
    /// The MP4 file to write
    #[arg(long, value_name = "FILE.mp4")]
    out: PathBuf,
    /// Where to write the signed manifest [default: OUT.manifest.json]
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// The manifest's digest of the file
    #[arg(long, value_enum, default_value = "blake3")]
    digest: DigestArg,
    #[command(flatten)]
    access: AccessArgs,
    #[command(flatten)]
    conn: Conn,
}

/// `camvault hold ...`
#[derive(Subcommand, Debug)]
pub enum HoldCommand {
    /// Protect cameras' video in a range from retention until released
    Place(HoldPlaceArgs),
    /// Release a hold
    Release(HoldReleaseArgs),
    /// List holds in force (or all)
    List(HoldListArgs),
}

/// `camvault hold place`
#[derive(Args, Debug)]
pub struct HoldPlaceArgs {
    /// Case reference
    #[arg(long, value_name = "REF")]
    case: String,
    /// Cameras to hold, comma-separated
    #[arg(long, value_delimiter = ',', required = true, value_name = "ID,...")]
    cameras: Vec<String>,
    #[command(flatten)]
    window: ClosedWindow,
    /// Why the video is held
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    conn: Conn,
}

/// `camvault hold release`
#[derive(Args, Debug)]
pub struct HoldReleaseArgs {
    /// The hold's id (from `hold list`)
    #[arg(long)]
    id: u64,
    /// Why it is released
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    conn: Conn,
}

/// `camvault hold list`
#[derive(Args, Debug)]
pub struct HoldListArgs {
    /// Released holds too
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    conn: Conn,
}

/// `camvault retention ...`
#[derive(Subcommand, Debug)]
pub enum RetentionCommand {
    /// A camera's retention (or the default)
    Get(RetentionGetArgs),
    /// Set a camera's retention
    Set(RetentionSetArgs),
    /// Crypto-erase every expired, unheld segment now
    Sweep(ConnOnly),
}

/// `camvault retention get`
#[derive(Args, Debug)]
pub struct RetentionGetArgs {
    /// Camera [default: the store's default retention]
    #[arg(long, default_value = "", hide_default_value = true)]
    camera: String,
    #[command(flatten)]
    conn: Conn,
}

/// `camvault retention set`
#[derive(Args, Debug)]
pub struct RetentionSetArgs {
    /// Camera
    #[arg(long)]
    camera: String,
    /// Days to keep its video (at least 30, TN 11.1)
    #[arg(long)]
    days: u32,
    /// Why
    #[arg(long, default_value = "", hide_default_value = true)]
    reason: String,
    #[command(flatten)]
    conn: Conn,
}

/// A verb whose only options are the connection's.
#[derive(Args, Debug)]
pub struct ConnOnly {
    #[command(flatten)]
    conn: Conn,
}

/// `camvault audit ...`
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Print audit entries (JSON, one a line)
    Query(AuditQueryArgs),
    /// Check the audit log's hash chain and signed checkpoints
    Verify(ConnOnly),
}

/// `camvault audit query`
#[derive(Args, Debug)]
pub struct AuditQueryArgs {
    /// Only entries by this actor
    #[arg(long, default_value = "", hide_default_value = true)]
    actor: String,
    /// Only actions starting with this (video., login, token.create, ...)
    #[arg(long, default_value = "", hide_default_value = true)]
    action: String,
    /// Only entries about this camera
    #[arg(long, default_value = "", hide_default_value = true)]
    camera: String,
    #[command(flatten)]
    window: Window,
    /// At most N entries [default: all]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
    #[command(flatten)]
    conn: Conn,
}

/// `camvault camera ...`
#[derive(Subcommand, Debug)]
pub enum CameraCommand {
    /// Register a camera or change its record
    Put(CameraPutArgs),
    /// List registered cameras
    List(ConnOnly),
    /// A camera's last frame, bit rate and gaps
    Health(CameraHealthArgs),
}

/// `camvault camera put`
#[derive(Args, Debug)]
pub struct CameraPutArgs {
    /// Camera id (the stream's name in the store)
    #[arg(long)]
    id: String,
    /// Unit that owns the camera and its video
    #[arg(long)]
    unit: String,
    /// Sectors it serves, comma-separated
    #[arg(long, value_delimiter = ',', value_name = "SECTOR,...")]
    sectors: Vec<String>,
    /// Where it is mounted
    #[arg(long, default_value = "", hide_default_value = true)]
    location: String,
    /// Make and model
    #[arg(long, default_value = "", hide_default_value = true)]
    model: String,
    /// QCVN 135 certification status
    #[arg(long, default_value = "", hide_default_value = true)]
    certification: String,
    #[command(flatten)]
    conn: Conn,
}

/// `camvault camera health`
#[derive(Args, Debug)]
pub struct CameraHealthArgs {
    /// Camera
    #[arg(long)]
    camera: String,
    #[command(flatten)]
    conn: Conn,
}

/// `camvault token ...`
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Issue a token (printed once; only its hash is stored)
    Create(TokenCreateArgs),
    /// Revoke a token
    Revoke(TokenRevokeArgs),
    /// List tokens
    List(ConnOnly),
}

/// `camvault token create`
#[derive(Args, Debug)]
pub struct TokenCreateArgs {
    /// Who the token speaks for, as the audit log names it
    #[arg(long)]
    name: String,
    /// The principal's unit
    #[arg(long)]
    unit: String,
    /// Roles, comma-separated: admin, operator, viewer, auditor, ingest
    #[arg(long, value_delimiter = ',', required = true, value_name = "ROLE,...", value_parser = parse_role)]
    roles: Vec<String>,
    /// Sectors whose cameras a viewer may read, comma-separated
    #[arg(long, value_delimiter = ',', value_name = "SECTOR,...")]
    sectors: Vec<String>,
    /// Cameras an ingest token may publish to, comma-separated
    #[arg(long, value_delimiter = ',', value_name = "ID,...")]
    cameras: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

fn parse_role(s: &str) -> Result<String, String> {
    camvault_server::state::Role::parse(s).map(|r| r.name().to_string())
}

/// `camvault token revoke`
#[derive(Args, Debug)]
pub struct TokenRevokeArgs {
    /// The token's id (from `token list`)
    #[arg(long)]
    id: String,
    #[command(flatten)]
    conn: Conn,
}

/// `camvault server-key`
#[derive(Args, Debug)]
#[command(after_help = "Pinning trusts whatever key this connection presents: compare the fingerprint with one \
                        obtained out of band (from the server's operator, or `camvault server-key` on the server \
                        itself) before relying on it. The key is kept in $CAMVAULT_TRUSTED_KEY, else \
                        $XDG_CONFIG_HOME/camvault/server-key, else ~/.config/camvault/server-key.")]
pub struct ServerKeyArgs {
    /// Trust this key for verify-export and verify-certificate (stored 0600 in a 0700 directory)
    #[arg(long)]
    pin: bool,
    /// With --pin: replace a different key pinned before
    #[arg(long, requires = "pin")]
    replace: bool,
    #[command(flatten)]
    conn: Conn,
}

/// `camvault decommission`
#[derive(Args, Debug)]
pub struct DecommissionArgs {
    /// Why the volume is decommissioned (in the certificate and the audit log)
    #[arg(long)]
    reason: String,
    /// Confirms that every data key of the volume is to be destroyed: its video becomes unreadable for good
    #[arg(long, required = true)]
    yes_destroy_all_keys: bool,
    /// Where to write the signed erase certificate (JSON); must not exist yet
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    conn: Conn,
}

/// `camvault verify-export`
#[derive(Args, Debug)]
#[command(after_help = TRUST_HELP)]
pub struct VerifyExportArgs {
    /// The exported MP4
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Its manifest (as `camvault export` writes it)
    #[arg(value_name = "MANIFEST")]
    manifest: PathBuf,
    /// The server's public key (64 hex digits) [default: the key pinned with `server-key --pin`]
    #[arg(long, value_name = "HEX")]
    public_key: Option<String>,
}

/// `camvault verify-certificate`
#[derive(Args, Debug)]
#[command(after_help = TRUST_HELP)]
pub struct VerifyCertificateArgs {
    /// The certificate JSON that `camvault decommission --out` wrote
    #[arg(value_name = "CERT.json")]
    certificate: PathBuf,
    /// The server's public key (64 hex digits) [default: the key pinned with `server-key --pin`]
    #[arg(long, value_name = "HEX")]
    public_key: Option<String>,
}

const TRUST_HELP: &str = "The signature is checked against a key you trust: --public-key, or the key pinned with \
                          `camvault server-key --pin`. The key written inside the file cannot vouch for itself \
                          (anyone can re-sign an altered file with a fresh key), so without a trusted key the \
                          check refuses.";

type Auth = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
type Chan = InterceptedService<Channel, Auth>;

async fn connect(conn: &Conn) -> Result<Chan, String> {
    let addr = conn.server.clone();
    let mut endpoint =
        camvault_server::conn::client_endpoint(Channel::from_shared(addr.clone()).map_err(|e| format!("--server {addr}: {e}"))?);
    if let Some(ca) = &conn.ca {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(c), Some(k)) = (&conn.cert, &conn.key) {
            tls = tls.identity(Identity::from_pem(read(c)?, read(k)?));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        let mut msg = format!("cannot reach {addr}: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        msg
    })?;
    let header: MetadataValue<_> = format!("Bearer {}", conn.token).parse().map_err(|_| "the token is not a valid header value")?;
    let auth: Auth = Box::new(move |mut req: Request<()>| {
        req.metadata_mut().insert("authorization", header.clone());
        Ok(req)
    });
    Ok(InterceptedService::new(channel, auth))
}

fn st(e: Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

fn progress(label: &str, done: u64, total: u64, started: Instant) {
    let width = 30;
    let filled = if total == 0 { width } else { (done * width / total.max(1)).min(width) } as usize;
    eprint!(
        "\r{label} [{}{}] {done}/{total} {:.1}s",
        "#".repeat(filled),
        " ".repeat(width as usize - filled),
        started.elapsed().as_secs_f64()
    );
}

/// Runs a client verb: the offline checks here, the others over gRPC.
pub fn run(cmd: ClientCommand) -> Result<(), String> {
    match cmd {
        ClientCommand::VerifyExport(a) => verify_export(&a),
        ClientCommand::VerifyCertificate(a) => verify_certificate(&a),
        // A client verb is one call at a time: on one thread its connection and the code
        // reading the call's messages do not wake each other across threads once per message
        // (receiving an export, 0.17-0.20 -> 0.13-0.14 CPU s/GB; BENCHMARKS.md, History).
        remote => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(run_remote(remote))),
    }
}

async fn run_remote(cmd: ClientCommand) -> Result<(), String> {
    match cmd {
        ClientCommand::Ingest(a) => ingest(a).await,
        ClientCommand::Recordings(a) => {
            let (from_us, to_us) = a.window.resolve()?;
            let mut c = proto::catalog_client::CatalogClient::new(connect(&a.conn).await?);
            let r = c.list_recordings(proto::ListRecordingsRequest { camera: a.camera, from_us, to_us }).await.map_err(st)?.into_inner();
            for s in r.spans {
                println!("recorded {} .. {}", format_rfc3339(s.from_us), format_rfc3339(s.to_us));
            }
            Ok(())
        }
        ClientCommand::Play(a) => {
            let (from_us, mut to_us) = a.window.resolve()?;
            if a.follow && a.window.last.is_some() {
                // `--last 10m --follow`: the last ten minutes, then live.
                to_us = 0;
            }
            let mut c = proto::playback_client::PlaybackClient::new(connect(&a.conn).await?)
                .max_decoding_message_size(camvault_server::server::MESSAGE_BYTES_MAX);
            let req = proto::ReadFramesRequest { camera: a.camera, from_us, to_us, follow: a.follow, access: Some(a.access.to_proto()) };
            let mut s = c.read_frames(req).await.map_err(st)?.into_inner();
            let mut frames = 0u64;
            while let Some(item) = s.message().await.map_err(st)? {
                match item.item {
                    Some(proto::read_item::Item::Frame(f)) => {
                        frames += 1;
                        if a.verbose {
                            println!("{} key={} {} bytes", format_rfc3339(f.ts_us), f.key, f.payload.len());
                        }
                    }
                    Some(proto::read_item::Item::Config(c)) if a.verbose => println!("codec config: {} bytes", c.config.len()),
                    _ => {}
                }
            }
            println!("{frames} frames");
            Ok(())
        }
        ClientCommand::Export(a) => export(a).await,
        ClientCommand::Hold(h) => hold(h).await,
        ClientCommand::Retention(r) => retention(r).await,
        ClientCommand::Audit(a) => audit(a).await,
        ClientCommand::Camera(c) => camera(c).await,
        ClientCommand::Token(t) => token(t).await,
        ClientCommand::ServerKey(a) => server_key(a).await,
        ClientCommand::Decommission(a) => decommission(a).await,
        ClientCommand::VerifyExport(_) | ClientCommand::VerifyCertificate(_) => Err("an offline check ran as a remote call".into()),
    }
}

/// A frame to publish: decode-time offset in µs, presentation time in 90 kHz, key, Annex B data.
type IngestFrame = (i64, i64, bool, Vec<u8>);

async fn ingest(a: IngestArgs) -> Result<(), String> {
    let file = a.file.display().to_string();
    let name = a.file.to_string_lossy().to_ascii_lowercase();
    let codec = match a.codec {
        Some(CodecArg::H265) => storage_core::Codec::H265,
        Some(CodecArg::H264) => storage_core::Codec::H264,
        None if name.ends_with(".h265") || name.ends_with(".265") || name.ends_with(".hevc") => storage_core::Codec::H265,
        None => storage_core::Codec::H264,
    };
    let data = std::fs::read(&a.file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let (codec, config, frames): (storage_core::Codec, Vec<u8>, Vec<IngestFrame>) = if name.ends_with(".mp4") || name.ends_with(".mov") {
        let t = camvault_server::mp4_in::read(&data).map_err(|e| format!("{file}: {e}"))?;
        let ts = i64::from(t.timescale.max(1));
        let first_pts = t.samples.iter().map(|s| s.pts).min().unwrap_or(0);
        let frames = t
            .samples
            .into_iter()
            .map(|s| (rescale(s.dts, ts, 1_000_000), rescale(s.pts.saturating_sub(first_pts), ts, 90_000), s.key, s.data))
            .collect();
        (t.codec, t.config, frames)
    } else {
        let (aus, config) = h26x::access_units(codec, &data);
        if aus.is_empty() || config.is_empty() {
            return Err(format!(
                "{file} holds no {codec:?} access units with parameter sets (an Annex B elementary stream or an .mp4 is expected)"
            ));
        }
        let frame_us = 1_000_000 / i64::from(a.fps);
        // Capture times follow decode order; presentation times come from the picture order
        // counts (B-frames), delayed so that no frame is presented before it is decoded.
        let order = h26x::presentation_order(codec, &config, &aus);
        let delay = order.iter().enumerate().map(|(n, &p)| n as i64 - p).max().unwrap_or(0).max(0);
        let frames = aus
            .into_iter()
            .enumerate()
            .map(|(n, au)| (n as i64 * frame_us, (order[n] + delay) * frame_us * 9 / 100, au.key, au.data))
            .collect();
        (codec, config, frames)
    };
    let total = frames.len() as u64;
    // A file is footage recorded earlier: sent as fast as it goes, or from a given start, it
    // is a backfill, and without --start it ends now. Paced from now, it is live.
    let backfill = a.fast || a.start.is_some();
    let now = camvault_server::now_us();
    let span_us = frames.last().map_or(0, |f| f.0.saturating_add(40_000));
    let start_us = match a.start {
        Some(t) => t.resolve(now),
        None if a.fast => now.saturating_sub(span_us),
        None => now,
    };
    let codec_p = if codec == storage_core::Codec::H265 { proto::Codec::H265 } else { proto::Codec::H264 } as i32;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(proto::PublishRequest {
        msg: Some(proto::publish_request::Msg::Open(proto::OpenStream {
            camera: a.camera,
            codec: Some(proto::CodecConfig { codec: codec_p, config }),
            backfill,
        })),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut c = proto::ingest_client::IngestClient::new(connect(&a.conn).await?)
        .max_encoding_message_size(camvault_server::server::MESSAGE_BYTES_MAX);
    let fast = a.fast;
    let sender = tokio::spawn(async move {
        let started = Instant::now();
        for (offset_us, pts_90k, key, payload) in frames {
            if !fast {
                tokio::time::sleep_until((started + Duration::from_micros(offset_us.max(0) as u64)).into()).await;
            }
            let f = proto::Frame { ts_us: start_us + offset_us, pts_90k: Some(pts_90k), key, payload: payload.into() };
            if tx.send(proto::PublishRequest { msg: Some(proto::publish_request::Msg::Frame(f)) }).await.is_err() {
                return;
            }
        }
    });
    let mut acks = c.publish(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map_err(st)?.into_inner();
    let started = Instant::now();
    let mut durable = 0;
    loop {
        match acks.message().await {
            Ok(Some(a)) => {
                durable = a.durable_seq;
                progress("ingest", durable, total, started);
            }
            Ok(None) => break,
            Err(e) => {
                eprintln!();
                return Err(format!(
                    "{} ({durable} of {total} frames are durable: the rest can be sent again from frame {})",
                    st(e),
                    durable + 1
                ));
            }
        }
    }
    let _ = sender.await;
    eprintln!();
    if durable != total {
        return Err(format!("only {durable} of {total} frames were acknowledged durable"));
    }
    println!("{total} frames ingested and durable");
    Ok(())
}

async fn export(a: ExportArgs) -> Result<(), String> {
    let (from_us, to_us) = a.window.resolve()?;
    let out = a.out.display().to_string();
    let mut c = proto::export_client::ExportClient::new(connect(&a.conn).await?)
        .max_decoding_message_size(camvault_server::server::MESSAGE_BYTES_MAX);
    let digest = match a.digest {
        DigestArg::Blake3 => camvault_server::digest::DigestAlgorithm::Blake3,
        DigestArg::Sha256 => camvault_server::digest::DigestAlgorithm::Sha256,
    };
    let req = proto::ExportRequest { camera: a.camera, from_us, to_us, access: Some(a.access.to_proto()), digest: digest.name().into() };
    let mut s = c.export_clip(req).await.map_err(st)?.into_inner();
    let tmp = format!("{out}.part");
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("cannot create {tmp}: {e}"))?;
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut manifest = None;
    while let Some(chunk) = s.message().await.map_err(st)? {
        match chunk.part {
            Some(proto::export_chunk::Part::Mp4(b)) => {
                f.write_all(&b).map_err(|e| format!("{tmp}: {e}"))?;
                bytes += b.len() as u64;
                eprint!("\rexport {:.1} MB {:.1}s", bytes as f64 / 1e6, started.elapsed().as_secs_f64());
            }
            Some(proto::export_chunk::Part::Manifest(m)) => manifest = Some(m),
            None => {}
        }
    }
    eprintln!();
    let m = manifest.ok_or("the server sent no manifest: the export is incomplete")?;
    f.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &a.out).map_err(|e| e.to_string())?;
    let mpath = a.manifest.map(|p| p.display().to_string()).unwrap_or_else(|| format!("{out}.manifest.json"));
    let doc = serde_json::json!({ "manifest": m.json, "signature": m.signature, "public_key": m.public_key });
    std::fs::write(&mpath, serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?).map_err(|e| format!("{mpath}: {e}"))?;
    println!("{out}: {bytes} bytes; manifest {mpath}");
    Ok(())
}

/// The key a verifier trusts, and where it came from (for messages).
struct TrustedKey {
    hex: String,
    fingerprint: String,
    source: String,
}

/// Largest trusted-key file read: a key is 64 hex digits and a newline.
const TRUSTED_KEY_FILE_BYTES_MAX: u64 = 4096;

/// Where `server-key --pin` keeps the trusted key: `$CAMVAULT_TRUSTED_KEY`, else
/// `$XDG_CONFIG_HOME/camvault/server-key`, else `~/.config/camvault/server-key`.
fn trusted_key_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CAMVAULT_TRUSTED_KEY").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    // The XDG base directory specification: a relative XDG_CONFIG_HOME is to be ignored.
    let config = match std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from).filter(|p| p.is_absolute()) {
        Some(x) => x,
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .ok_or("no place for a pinned key: set CAMVAULT_TRUSTED_KEY, XDG_CONFIG_HOME or HOME")?
            .join(".config"),
    };
    Ok(config.join("camvault").join("server-key"))
}

/// A public key as 64 lowercase hex digits, or why not.
fn normalise_key(hex: &str, what: &str) -> Result<String, String> {
    let k = hex.trim().to_ascii_lowercase();
    storage_core::signing::unhex::<32>(&k).ok_or_else(|| format!("{what} is not an Ed25519 public key (64 hex digits)"))?;
    Ok(k)
}

/// The pinned key, if one is pinned.
fn read_pinned(path: &Path) -> Result<Option<String>, String> {
    use std::io::Read as _;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the pinned key {}: {e}", path.display())),
    };
    let mut text = String::new();
    f.take(TRUSTED_KEY_FILE_BYTES_MAX)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the pinned key {}: {e}", path.display()))?;
    normalise_key(&text, &format!("the pinned key file {}", path.display())).map(Some)
}

/// The key to check signatures against: `--public-key`, else the pinned one. Refuses when
/// there is neither: the key inside a file cannot vouch for the file.
fn trusted_key(flag: Option<&str>) -> Result<TrustedKey, String> {
    let (hex, source) = match flag {
        Some(k) => (normalise_key(k, "--public-key")?, "--public-key".to_string()),
        None => {
            let path = trusted_key_path()?;
            match read_pinned(&path)? {
                Some(k) => (k, format!("pinned in {}", path.display())),
                None => {
                    return Err(format!(
                        "NOT VERIFIED: no trusted key. The public key written inside the file cannot vouch for it: anyone \
                         can alter a file and re-sign it with a key of their own. Pass --public-key HEX (the server's key, \
                         from its operator or `camvault server-key`), or pin it once with `camvault server-key --pin` \
                         (nothing is pinned in {})",
                        path.display()
                    ))
                }
            }
        }
    };
    let fingerprint = key_fingerprint(&hex)?;
    Ok(TrustedKey { hex, fingerprint, source })
}

/// Checks a signature under the trusted key. When it fails, says whether the document was
/// signed by the other key it names (naming both fingerprints) or altered.
fn check_signature(what: &str, claimed_key: Option<&str>, trusted: &TrustedKey, verifies: impl Fn(&str) -> bool) -> Result<(), String> {
    if verifies(&trusted.hex) {
        return Ok(());
    }
    let claimed = claimed_key.and_then(|k| normalise_key(k, "").ok()).filter(|k| *k != trusted.hex);
    match claimed {
        Some(other) if verifies(&other) => Err(format!(
            "NOT VERIFIED: {what} is signed by key {}, not by the trusted key {} ({}): it does not come from the \
             server you trust (or that server's key changed: check with its operator)",
            key_fingerprint(&other)?,
            trusted.fingerprint,
            trusted.source
        )),
        _ => Err(format!(
            "NOT VERIFIED: {what}'s signature does not verify under the trusted key {} ({}): it was altered",
            trusted.fingerprint, trusted.source
        )),
    }
}

/// Largest manifest or certificate read: a manifest is about 1 KiB; a certificate lists every
/// erased segment (~120 bytes each), so 256 MiB covers two million segments.
const SIGNED_DOCUMENT_BYTES_MAX: u64 = 256 << 20;

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(SIGNED_DOCUMENT_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > SIGNED_DOCUMENT_BYTES_MAX {
        return Err(format!("{} is larger than {SIGNED_DOCUMENT_BYTES_MAX} bytes: not a camvault document", path.display()));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks an exported file against its signed manifest, offline.
fn verify_export(a: &VerifyExportArgs) -> Result<(), String> {
    let trusted = trusted_key(a.public_key.as_deref())?;
    let (file, manifest) = (a.file.display().to_string(), a.manifest.display().to_string());
    let doc = read_json(&a.manifest)?;
    let text = doc["manifest"].as_str().ok_or_else(|| format!("{manifest} has no \"manifest\""))?;
    let sig = doc["signature"].as_str().ok_or_else(|| format!("{manifest} has no \"signature\""))?;
    check_signature("the manifest", doc["public_key"].as_str(), &trusted, |k| storage_core::signing::verify_hex(k, text.as_bytes(), sig))?;
    let m: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    // The same key signs erase certificates and audit checkpoints: only a manifest vouches
    // for an export.
    if m["type"] != "camvault-export-manifest" {
        return Err(format!("NOT VERIFIED: {manifest} is signed but is not an export manifest (type {})", m["type"]));
    }
    let (alg, stated) = camvault_server::digest::stated_digest(&m)?;
    let digest = alg.file_hex(&a.file).map_err(|e| format!("{file}: {e}"))?;
    if digest != stated {
        return Err(format!("NOT VERIFIED: {file} does not match the manifest: {} {digest}, manifest says {stated}", alg.name()));
    }
    println!(
        "OK: {file} is the export of camera {} [{} .. {}) by {} for {} (purpose: {}, approval: {}), signed by the trusted key {} ({})",
        m["camera"],
        m["from_us"],
        m["to_us"],
        m["exported_by"],
        m["requester"],
        m["purpose"],
        m["approval_ref"],
        trusted.fingerprint,
        trusted.source
    );
    Ok(())
}

/// Checks a decommission's erase certificate, offline.
fn verify_certificate(a: &VerifyCertificateArgs) -> Result<(), String> {
    let trusted = trusted_key(a.public_key.as_deref())?;
    let path = a.certificate.display().to_string();
    let doc = read_json(&a.certificate)?;
    let field = |name: &str| doc[name].as_str().map(String::from).ok_or_else(|| format!("{path} has no \"{name}\""));
    let cert = storage_core::EraseCertificate {
        document: field("certificate_json")?,
        signature: field("signature")?,
        public_key: field("public_key")?,
    };
    check_signature("the certificate", Some(&cert.public_key), &trusted, |k| cert.verify(k))?;
    let c: serde_json::Value = serde_json::from_str(&cert.document).map_err(|e| e.to_string())?;
    if c["type"] != "camvault-erase-certificate" {
        return Err(format!("NOT VERIFIED: {path} is signed but is not an erase certificate (type {})", c["type"]));
    }
    let completed = c["completed_us"].as_i64().map_or_else(|| "?".into(), format_rfc3339);
    println!(
        "OK: volume {} decommissioned at {completed} by {} (reason: {}): KEKs {} destroyed, {} segments erased; signed by the trusted key {} ({})",
        c["volume"], c["actor"], c["reason"], c["keks_destroyed"], c["segment_count"], trusted.fingerprint, trusted.source
    );
    Ok(())
}

/// Writes the pinned key: a 0600 file in a 0700 directory, replaced atomically.
fn pin_key(path: &Path, key_hex: &str) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        // A stale temporary file keeps its old mode through `open`.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(format!("{key_hex}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })()
    .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

async fn server_key(a: ServerKeyArgs) -> Result<(), String> {
    let mut c = proto::audit_client::AuditClient::new(connect(&a.conn).await?);
    let r = c.server_key(proto::ServerKeyRequest {}).await.map_err(st)?.into_inner();
    let key = normalise_key(&r.public_key, "the server's key")?;
    // Computed here, not taken from the server: the fingerprint is what the operator compares.
    let fingerprint = key_fingerprint(&key)?;
    if fingerprint != r.fingerprint {
        return Err(format!("the server states fingerprint {} for its key, which has fingerprint {fingerprint}", r.fingerprint));
    }
    println!("public key:  {key}");
    println!("fingerprint: {fingerprint}");
    if a.pin {
        let path = trusted_key_path()?;
        match read_pinned(&path)? {
            Some(old) if old == key => {
                println!("already pinned in {}", path.display());
                return Ok(());
            }
            Some(old) if !a.replace => {
                return Err(format!(
                    "{} pins another key, {}; the server presents {fingerprint}. If the server's key really changed, \
                     confirm {fingerprint} with its operator and pin it with --pin --replace",
                    path.display(),
                    key_fingerprint(&old)?
                ))
            }
            _ => {}
        }
        pin_key(&path, &key)?;
        println!("pinned in {}: verify-export and verify-certificate now trust this key", path.display());
    }
    Ok(())
}

async fn decommission(a: DecommissionArgs) -> Result<(), String> {
    let out = a.out.display().to_string();
    // The certificate is issued once, after the keys are gone: make sure it has somewhere to
    // go before asking for it.
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&a.out).map_err(|e| format!("cannot create {out}: {e}"))?;
    let result = async {
        let mut c = proto::admin_client::AdminClient::new(connect(&a.conn).await?);
        c.decommission(proto::DecommissionRequest { reason: a.reason }).await.map_err(st).map(tonic::Response::into_inner)
    }
    .await;
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&a.out);
            return Err(e);
        }
    };
    let doc = serde_json::json!({ "certificate_json": r.certificate_json, "signature": r.signature, "public_key": r.public_key });
    let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?;
    if let Err(e) = f.write_all(&bytes).and_then(|()| f.sync_all()) {
        // The only copy outside the audit log: print it rather than lose it.
        println!("{}", String::from_utf8_lossy(&bytes));
        return Err(format!("the volume is decommissioned, but writing its certificate to {out} failed ({e}): it is printed above"));
    }
    println!("volume decommissioned; erase certificate in {out} (check it with `camvault verify-certificate {out}`)");
    Ok(())
}

async fn hold(cmd: HoldCommand) -> Result<(), String> {
    match cmd {
        HoldCommand::Place(a) => {
            let (from_us, to_us) = a.window.resolve()?;
            let mut c = proto::holds_client::HoldsClient::new(connect(&a.conn).await?);
            let h = c
                .place_hold(proto::PlaceHoldRequest { case_ref: a.case, cameras: a.cameras, from_us, to_us, reason: a.reason })
                .await
                .map_err(st)?
                .into_inner();
            println!("hold {} placed; protects {}", h.id, h.protected_json);
        }
        HoldCommand::Release(a) => {
            let mut c = proto::holds_client::HoldsClient::new(connect(&a.conn).await?);
            let h = c.release_hold(proto::ReleaseHoldRequest { id: a.id, reason: a.reason }).await.map_err(st)?.into_inner();
            println!("hold {} released", h.id);
        }
        HoldCommand::List(a) => {
            let mut c = proto::holds_client::HoldsClient::new(connect(&a.conn).await?);
            for h in c.list_holds(proto::ListHoldsRequest { include_released: a.all }).await.map_err(st)?.into_inner().holds {
                println!(
                    "{} {} {:?} {}..{} by {} released={}",
                    h.id,
                    h.case_ref,
                    h.cameras,
                    format_rfc3339(h.from_us),
                    format_rfc3339(h.to_us),
                    h.placed_by,
                    h.released
                );
            }
        }
    }
    Ok(())
}

async fn retention(cmd: RetentionCommand) -> Result<(), String> {
    match cmd {
        RetentionCommand::Get(a) => {
            let mut c = proto::retention_client::RetentionClient::new(connect(&a.conn).await?);
            let r = c.get_retention(proto::GetRetentionRequest { camera: a.camera }).await.map_err(st)?.into_inner();
            println!("{}: {} days", r.camera, r.days);
        }
        RetentionCommand::Set(a) => {
            let mut c = proto::retention_client::RetentionClient::new(connect(&a.conn).await?);
            c.set_retention(proto::SetRetentionRequest { camera: a.camera, days: a.days, reason: a.reason }).await.map_err(st)?;
            println!("retention set to {} days", a.days);
        }
        RetentionCommand::Sweep(a) => {
            let mut c = proto::retention_client::RetentionClient::new(connect(&a.conn).await?);
            let r = c.sweep(proto::SweepRequest {}).await.map_err(st)?.into_inner();
            println!("erased {} segments; {} expired segments held back by legal holds", r.erased_segments, r.held_back);
        }
    }
    Ok(())
}

async fn audit(cmd: AuditCommand) -> Result<(), String> {
    match cmd {
        AuditCommand::Query(a) => {
            let (from_us, to_us) = a.window.resolve()?;
            let mut c = proto::audit_client::AuditClient::new(connect(&a.conn).await?);
            let req = proto::AuditQueryRequest {
                from_us,
                to_us,
                actor: a.actor,
                action: a.action,
                camera: a.camera,
                // 0 asks the API for every entry.
                limit: a.limit.unwrap_or(0),
            };
            for e in c.query(req).await.map_err(st)?.into_inner().entries_json {
                println!("{e}");
            }
        }
        AuditCommand::Verify(a) => {
            let mut c = proto::audit_client::AuditClient::new(connect(&a.conn).await?);
            let r = c.verify(proto::AuditVerifyRequest {}).await.map_err(st)?.into_inner();
            println!("{} entries, {} signed checkpoints, head {}", r.entries, r.checkpoints, r.head_hash);
            if !r.ok {
                return Err(format!("audit log damaged: {}", r.problem));
            }
        }
    }
    Ok(())
}

async fn camera(cmd: CameraCommand) -> Result<(), String> {
    match cmd {
        CameraCommand::Put(a) => {
            let mut c = proto::catalog_client::CatalogClient::new(connect(&a.conn).await?);
            let cam = proto::Camera {
                id: a.id,
                owning_unit: a.unit,
                sectors: a.sectors.into_iter().filter(|s| !s.is_empty()).collect(),
                location: a.location,
                model: a.model,
                certification: a.certification,
                metadata_updated_us: 0,
            };
            let r = c.put_camera(proto::PutCameraRequest { camera: Some(cam) }).await.map_err(st)?.into_inner();
            println!("camera {} registered to {}", r.id, r.owning_unit);
        }
        CameraCommand::List(a) => {
            let mut c = proto::catalog_client::CatalogClient::new(connect(&a.conn).await?);
            for cam in c.list_cameras(proto::ListCamerasRequest {}).await.map_err(st)?.into_inner().cameras {
                println!(
                    "{} unit={} sectors={:?} location={} certification={}",
                    cam.id, cam.owning_unit, cam.sectors, cam.location, cam.certification
                );
            }
        }
        CameraCommand::Health(a) => {
            let mut c = proto::catalog_client::CatalogClient::new(connect(&a.conn).await?);
            let h = c.camera_health(proto::CameraHealthRequest { camera: a.camera }).await.map_err(st)?.into_inner();
            println!(
                "{}: last frame {}, {:.0} bit/s, {} gaps in 24 h, offline since {}",
                h.camera,
                format_rfc3339(h.last_frame_us),
                h.bitrate_bps,
                h.gaps_last_24h,
                if h.offline_since_us == 0 { "-".into() } else { format_rfc3339(h.offline_since_us) }
            );
        }
    }
    Ok(())
}

async fn token(cmd: TokenCommand) -> Result<(), String> {
    let nonempty = |v: Vec<String>| v.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>();
    match cmd {
        TokenCommand::Create(a) => {
            let mut c = proto::admin_client::AdminClient::new(connect(&a.conn).await?);
            let p =
                proto::Principal { name: a.name, unit: a.unit, roles: a.roles, sectors: nonempty(a.sectors), cameras: nonempty(a.cameras) };
            let r = c.create_token(proto::CreateTokenRequest { principal: Some(p) }).await.map_err(st)?.into_inner();
            println!("{}", r.token);
            eprintln!("token {} created; it is shown once", r.token_id);
        }
        TokenCommand::Revoke(a) => {
            let mut c = proto::admin_client::AdminClient::new(connect(&a.conn).await?);
            c.revoke_token(proto::RevokeTokenRequest { token_id: a.id }).await.map_err(st)?;
            println!("revoked");
        }
        TokenCommand::List(a) => {
            let mut c = proto::admin_client::AdminClient::new(connect(&a.conn).await?);
            for t in c.list_tokens(proto::ListTokensRequest {}).await.map_err(st)?.into_inner().tokens {
                let p = t.principal.unwrap_or_default();
                println!("{} {} unit={} roles={:?} revoked={}", t.token_id, p.name, p.unit, p.roles, t.revoked);
            }
        }
    }
    Ok(())
}

/// `v` ticks of `from_hz` in ticks of `to_hz`, saturating: a file's times can be anything.
fn rescale(v: i64, from_hz: i64, to_hz: i64) -> i64 {
    let r = i128::from(v) * i128::from(to_hz) / i128::from(from_hz.max(1));
    i64::try_from(r).unwrap_or(if r < 0 { i64::MIN } else { i64::MAX })
}
