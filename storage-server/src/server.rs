//! The gRPC server: authentication, per-camera authorisation, audit of every read, and the
//! mapping between `camvault.v1` messages and storage-core calls. No byte of storage lives here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use storage_core::audit::{AuditQuery, AuditRecord};
use storage_core::retention::HoldRequest;
use storage_core::{Clock, Codec, Error, FrameIn, ReadItem, Store, StreamKind, SystemClock};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::digest::{DigestAlgorithm, FileHasher};
use crate::h26x;
use crate::mp4;
use crate::proto;
use crate::state::{load, new_secret, save, sha256_hex, CameraInfo, Cameras, Principal, Role, TokenRecord, Tokens};

/// Calls one connection may have in flight; more wait for a slot (a publish call holds its
/// slot for as long as its camera streams, so a client spreads its streams over connections).
pub const CALLS_PER_CONNECTION_MAX: usize = 256;

/// Largest gRPC message: a frame up to storage-core's 16 MiB limit plus framing. Raised
/// deliberately so that 4K I-frames above the 4 MiB default ingest whole.
pub const MESSAGE_BYTES_MAX: usize = storage_core::FRAME_BYTES_MAX + (64 << 10);
/// A publisher that sends nothing for this long is disconnected.
pub const PUBLISH_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most publish messages a call's task appends per wake-up (one batch).
const PUBLISH_BATCH_MESSAGES: usize = 64;

/// How often a publisher hears the durable sequence number when it advances.
const ACK_INTERVAL: Duration = Duration::from_millis(100);
/// The error metadata of a publish call that ends in an error: its durable sequence number,
/// from which the publisher resumes (the call's last `PublishResponse` says it too).
pub const DURABLE_SEQ_METADATA: &str = "camvault-durable-seq";
/// A token's use from one address is audited as a login at most once in this period.
const LOGIN_AUDIT_PERIOD: Duration = Duration::from_secs(3600);
/// Most (token, address) pairs remembered for the login audit. Past it, pairs not seen for a
/// period are forgotten first, then all: forgetting audits a login again, never less.
const LOGINS_REMEMBERED_MAX: usize = 65_536;
/// Export chunk size on the wire.
const EXPORT_CHUNK_BYTES: usize = 1 << 20;
/// Pieces queued between an export's muxer and its hashing thread, where it has one (see
/// `ExportSink`): four MP4 fragments (one GOP each), each sent as its header, then its data.
const EXPORT_PIPELINE_PIECES: usize = 8;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Shared server state.
pub struct Server {
    /// The store every call reads and writes.
    pub store: Arc<Store>,
    dir: PathBuf,
    tokens: Mutex<Tokens>,
    cameras: Mutex<Cameras>,
    /// When each token's login from each address (IP, not port: not one a TCP connection)
    /// was last audited; at most [`LOGINS_REMEMBERED_MAX`] pairs.
    logins_audited_us: Mutex<HashMap<(String, Option<std::net::IpAddr>), i64>>,
    /// Bumped by the store each time frames become durable; live follows wait on it.
    durable: tokio::sync::watch::Receiver<u64>,
    /// Bumped at each token revocation: long calls (publish, follow) then check their own token
    /// and end if it was revoked.
    revocations: tokio::sync::watch::Sender<u64>,
    /// Counters exported at `/metrics`.
    pub metrics: Arc<crate::metrics::ServerMetrics>,
}

/// Maps storage errors to gRPC status codes with messages a person can act on.
pub fn status(e: Error) -> Status {
    match e {
        Error::InvalidArgument(_) | Error::OutOfOrder { .. } | Error::CaptureTime { .. } => Status::invalid_argument(e.to_string()),
        Error::Overlap { .. } => Status::already_exists(e.to_string()),
        Error::LimitExceeded { .. } | Error::NoSpace { .. } => Status::resource_exhausted(e.to_string()),
        Error::NotFound(_) => Status::not_found(e.to_string()),
        Error::FailedPrecondition(_) | Error::Decommissioned(_) => Status::failed_precondition(e.to_string()),
        Error::Corrupt { .. } => Status::data_loss(e.to_string()),
        Error::Closed => Status::aborted(e.to_string()),
        _ if e.is_no_space() => Status::resource_exhausted(e.to_string()),
        // A failed fsync poisons its writer for good: the store takes writes again once the
        // server is restarted (DURABILITY.md "Resumable publishing").
        Error::Poisoned(_) => Status::unavailable(format!("{e}; the server must be restarted before it takes writes again")),
        _ => Status::internal(e.to_string()),
    }
}

fn codec_from(c: i32) -> Result<Codec, Status> {
    match proto::Codec::try_from(c) {
        Ok(proto::Codec::H264) => Ok(Codec::H264),
        Ok(proto::Codec::H265) => Ok(Codec::H265),
        _ => Err(Status::invalid_argument(format!("unknown codec {c}: use H264 or H265"))),
    }
}

fn codec_to(c: Codec) -> i32 {
    match c {
        Codec::H265 => proto::Codec::H265 as i32,
        _ => proto::Codec::H264 as i32,
    }
}

fn to_proto_principal(p: &Principal) -> proto::Principal {
    proto::Principal {
        name: p.name.clone(),
        unit: p.unit.clone(),
        roles: p.roles.iter().map(|r| r.name().to_string()).collect(),
        sectors: p.sectors.clone(),
        cameras: p.cameras.clone(),
    }
}

fn camera_to_proto(c: &CameraInfo) -> proto::Camera {
    proto::Camera {
        id: c.id.clone(),
        owning_unit: c.owning_unit.clone(),
        sectors: c.sectors.clone(),
        location: c.location.clone(),
        model: c.model.clone(),
        certification: c.certification.clone(),
        metadata_updated_us: c.metadata_updated_us,
    }
}

/// What a permitted read of video must record.
struct ReadGrant {
    justification: String,
}

fn now_us() -> i64 {
    SystemClock.now_us()
}

impl Server {
    /// Opens the server state in `dir`; on a fresh server creates the first admin and returns
    /// its token (shown once, stored only as a hash).
    pub fn new(store: Arc<Store>, dir: PathBuf) -> Result<(Server, Option<String>), String> {
        let mut tokens: Tokens = load(&dir.join("tokens.json"))?;
        let cameras: Cameras = load(&dir.join("cameras.json"))?;
        let mut first = None;
        if tokens.tokens.is_empty() {
            let secret = new_secret()?;
            let admin = Principal {
                name: "admin".into(),
                unit: "provincial-centre".into(),
                roles: vec![Role::Admin],
                sectors: vec![],
                cameras: vec![],
            };
            tokens.tokens.push(TokenRecord {
                id: "t1".into(),
                sha256: sha256_hex(secret.as_bytes()),
                principal: admin,
                created_us: now_us(),
                revoked: false,
            });
            save(&dir.join("tokens.json"), &tokens)?;
            first = Some(secret);
        }
        let (durable_tx, durable) = tokio::sync::watch::channel(0u64);
        store.on_durable(move || durable_tx.send_modify(|n| *n = n.wrapping_add(1)));
        Ok((
            Server {
                store,
                dir,
                tokens: Mutex::new(tokens),
                cameras: Mutex::new(cameras),
                logins_audited_us: Mutex::new(HashMap::new()),
                durable,
                revocations: tokio::sync::watch::channel(0u64).0,
                metrics: Arc::new(crate::metrics::ServerMetrics::default()),
            },
            first,
        ))
    }

    /// Resolves once the token `id` is revoked: a long call selects on it and ends.
    async fn watch_revocation(&self, id: &str) {
        let mut rx = self.revocations.subscribe();
        loop {
            let revoked = self.tokens.lock().map(|t| t.tokens.iter().any(|r| r.id == id && r.revoked)).unwrap_or(true);
            if revoked || rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Appends an audit entry. The append fsyncs, so on a runtime worker it runs in
    /// `block_in_place`: the worker's other tasks move to another thread meanwhile.
    fn audit(&self, rec: AuditRecord) -> Result<(), Status> {
        let on_worker =
            tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let res = if on_worker { tokio::task::block_in_place(|| self.store.audit(rec)) } else { self.store.audit(rec) };
        res.map(|_| ()).map_err(status)
    }

    /// Checks the bearer token; records a login once per token and [`LOGIN_AUDIT_PERIOD`]
    /// (with the peer it came from), however many connections the token opens.
    fn authenticate<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        self.authenticate_call(req).map(|(p, _)| p)
    }

    /// [`Server::authenticate`], with the token's id for a long call to watch.
    fn authenticate_call<T>(&self, req: &Request<T>) -> Result<(Principal, String), Status> {
        let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let Some(secret) = header.strip_prefix("Bearer ").map(str::trim) else {
            self.metrics.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(Status::unauthenticated("missing bearer token: send `authorization: Bearer <token>`"));
        };
        let hash = sha256_hex(secret.as_bytes());
        let found = {
            let t = self.tokens.lock().map_err(|_| Status::internal("token lock"))?;
            t.tokens.iter().find(|t| t.sha256 == hash && !t.revoked).map(|t| (t.id.clone(), t.principal.clone()))
        };
        let Some((id, principal)) = found else {
            self.metrics.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(Status::unauthenticated("unknown or revoked token"));
        };
        let peer = req.remote_addr();
        let key = (id.clone(), peer.map(|a: SocketAddr| a.ip()));
        let now = crate::now_us();
        let period_us = LOGIN_AUDIT_PERIOD.as_micros() as i64;
        let due =
            self.logins_audited_us.lock().map(|m| m.get(&key).is_none_or(|last| now.saturating_sub(*last) >= period_us)).unwrap_or(true);
        if due {
            self.audit(AuditRecord {
                actor: principal.name.clone(),
                action: "login".into(),
                detail: serde_json::json!({ "token_id": id, "peer": peer.map(|a| a.to_string()).unwrap_or_default() }),
                ..AuditRecord::default()
            })?;
            // Remembered only once the entry is durable: a failed append audits the next call.
            if let Ok(mut m) = self.logins_audited_us.lock() {
                if m.len() >= LOGINS_REMEMBERED_MAX {
                    m.retain(|_, last| now.saturating_sub(*last) < period_us);
                    if m.len() >= LOGINS_REMEMBERED_MAX {
                        m.clear();
                    }
                }
                m.insert(key, now);
            }
        }
        Ok((principal, id))
    }

    fn camera(&self, id: &str) -> Result<CameraInfo, Status> {
        self.cameras
            .lock()
            .map_err(|_| Status::internal("camera lock"))?
            .cameras
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("camera {id} is not in the registry (Catalog.PutCamera)")))
    }

    /// Whether `p` sees `c` within its own scope (unit for operators and admins, sectors for
    /// viewers).
    fn in_scope(p: &Principal, c: &CameraInfo) -> bool {
        ((p.has(Role::Operator) || p.has(Role::Admin)) && p.unit == c.owning_unit)
            || (p.has(Role::Viewer) && c.sectors.iter().any(|s| p.sectors.contains(s)))
    }

    /// The rules for reading video (TN 6.2-6.4, 8.1, 10.2): a purpose always; within scope,
    /// allowed; an admin outside its unit only with one of the three justifications; an
    /// operator or viewer outside scope only with an approval reference.
    fn authorize_read(&self, p: &Principal, c: &CameraInfo, a: &proto::Access) -> Result<ReadGrant, Status> {
        let r = self.authorize_read_inner(p, c, a);
        if matches!(&r, Err(e) if e.code() == tonic::Code::PermissionDenied) {
            self.metrics.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    fn authorize_read_inner(&self, p: &Principal, c: &CameraInfo, a: &proto::Access) -> Result<ReadGrant, Status> {
        if !(p.has(Role::Admin) || p.has(Role::Operator) || p.has(Role::Viewer)) {
            return Err(Status::permission_denied(format!("{} may not read video", p.name)));
        }
        if a.purpose.trim().is_empty() {
            return Err(Status::invalid_argument("every read of video needs a purpose (TN 10.2)"));
        }
        if Self::in_scope(p, c) {
            return Ok(ReadGrant { justification: String::new() });
        }
        if p.has(Role::Admin) {
            let j = proto::Justification::try_from(a.justification).unwrap_or(proto::Justification::None);
            return match j {
                proto::Justification::EmergencyCommand => Ok(ReadGrant { justification: "emergency_command".into() }),
                proto::Justification::ConnectionFaultRepair => Ok(ReadGrant { justification: "connection_fault_repair".into() }),
                proto::Justification::WrittenRequest if !a.document_ref.trim().is_empty() => {
                    Ok(ReadGrant { justification: format!("written_request:{}", a.document_ref.trim()) })
                }
                proto::Justification::WrittenRequest => Err(Status::invalid_argument("a written-request justification needs its document reference")),
                proto::Justification::None => Err(Status::permission_denied(format!(
                    "camera {} belongs to {}: an administrator reads another unit's video only with a justification (emergency command, connection-fault repair, or a written request with its document reference; TN 6.2)",
                    c.id, c.owning_unit
                ))),
            };
        }
        if !a.approval_ref.trim().is_empty() {
            return Ok(ReadGrant { justification: String::new() });
        }
        Err(Status::permission_denied(format!("camera {} is outside {}'s scope: an approval reference is required (TN 8.1)", c.id, p.name)))
    }

    fn require(p: &Principal, r: Role) -> Result<(), Status> {
        if p.has(r) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!("{} lacks the {} role", p.name, r.name())))
        }
    }

    #[allow(clippy::too_many_arguments, reason = "each field is a column of the processing log (TN 10.2)")]
    fn audit_read(
        &self,
        p: &Principal,
        action: &str,
        camera: &str,
        from: i64,
        to: i64,
        a: &proto::Access,
        g: &ReadGrant,
        detail: serde_json::Value,
    ) -> Result<(), Status> {
        self.audit(AuditRecord {
            actor: p.name.clone(),
            action: action.into(),
            cameras: vec![camera.into()],
            from_us: Some(from),
            to_us: Some(to),
            purpose: a.purpose.clone(),
            requester: a.requester.clone(),
            approval_ref: a.approval_ref.clone(),
            justification: g.justification.clone(),
            detail,
        })
    }
}

/// The gRPC services over one [`Server`].
#[derive(Clone)]
pub struct Api(pub Arc<Server>);

impl Api {
    /// `camvault.v1.Ingest/Publish` over a call's decoded messages (`ingest.rs` decodes them
    /// and answers the call).
    pub async fn publish_messages<S>(&self, req: Request<S>) -> Result<Response<BoxStream<proto::PublishResponse>>, Status>
    where
        S: Stream<Item = Result<proto::PublishRequest, Status>> + Unpin + Send + 'static,
    {
        let (p, token_id) = self.0.authenticate_call(&req)?;
        if let Err(e) = Server::require(&p, Role::Ingest) {
            self.0.metrics.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(e);
        }
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(PUBLISH_IDLE_TIMEOUT, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no OpenStream message"))?
            .ok_or_else(|| Status::invalid_argument("empty publish stream"))??;
        let Some(proto::publish_request::Msg::Open(open)) = first.msg else {
            return Err(Status::invalid_argument("the first message must open the stream (camera and codec)"));
        };
        if !p.cameras.contains(&open.camera) {
            self.0.metrics.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(Status::permission_denied(format!("{} may not publish to camera {}", p.name, open.camera)));
        }
        // Unregistered cameras have no owner, so nobody could be authorised to read their video.
        self.0.camera(&open.camera)?;
        let cfg = open.codec.ok_or_else(|| Status::invalid_argument("OpenStream needs a codec"))?;
        let codec = codec_from(cfg.codec)?;
        // The parameter sets must parse as the declared codec: export depends on them.
        h26x::sample_description(codec, &cfg.config)
            .map_err(|e| Status::invalid_argument(format!("codec configuration for {}: {e}", open.camera)))?;
        let server = self.0.clone();
        let kind = if open.backfill { StreamKind::Backfill } else { StreamKind::Live };
        let mut writer = server.store.open_stream_as(&open.camera, codec, &cfg.config, kind).map_err(status)?;
        let (tx, rx) = mpsc::channel::<Result<proto::PublishResponse, Status>>(64);
        let camera = open.camera.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ACK_INTERVAL);
            let mut accepted = 0u64;
            let mut acked = 0u64;
            let mut codec = codec;
            let revoked = server.watch_revocation(&token_id);
            tokio::pin!(revoked);
            let result: Result<(), Status> = async {
                loop {
                    tokio::select! {
                        () = &mut revoked => return Err(Status::unauthenticated("the token was revoked")),
                        msg = tokio::time::timeout(PUBLISH_IDLE_TIMEOUT, inbound.next()) => {
                            let msg = match msg {
                                Err(_) => return Err(Status::deadline_exceeded(format!("publisher for {camera} was silent for {} s", PUBLISH_IDLE_TIMEOUT.as_secs()))),
                                Ok(None) => return Ok(()),
                                Ok(Some(Err(e))) => return Err(e),
                                Ok(Some(Ok(m))) => m,
                            };
                            // Take what else has already arrived: the metrics lock, the ack
                            // check and the select are paid once per batch, not per message.
                            let mut batch = vec![msg];
                            let mut ended = None;
                            while batch.len() < PUBLISH_BATCH_MESSAGES {
                                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                                match Pin::new(&mut inbound).poll_next(&mut cx) {
                                    std::task::Poll::Ready(Some(Ok(m))) => batch.push(m),
                                    std::task::Poll::Ready(Some(Err(e))) => {
                                        ended = Some(Err(e));
                                        break;
                                    }
                                    std::task::Poll::Ready(None) => {
                                        ended = Some(Ok(()));
                                        break;
                                    }
                                    std::task::Poll::Pending => break,
                                }
                            }
                            apply_publish(&server, &camera, &mut writer, &mut codec, batch, &mut accepted)?;
                            if let Some(end) = ended {
                                return end;
                            }
                        }
                        _ = tick.tick() => {}
                    }
                    let durable = writer.durable_seq();
                    server.metrics.camera(&camera, |c| c.durable_lag = accepted.saturating_sub(durable));
                    if durable > acked || (accepted > 0 && accepted.is_multiple_of(25)) {
                        acked = durable;
                        if tx.send(Ok(proto::PublishResponse { accepted_seq: accepted, durable_seq: durable })).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            .await;
            // Seal: everything accepted becomes durable, then the final acknowledgement. A call
            // that ends in an error says first what is durable, so that the publisher resumes
            // from there (DURABILITY.md "Resumable publishing").
            let durable_before = writer.durable_seq();
            let closed = tokio::task::block_in_place(|| writer.close());
            let durable = if closed.is_ok() { accepted } else { durable_before };
            let end = match (result, closed) {
                (Err(e), _) => Some(e),
                (Ok(()), Err(e)) => Some(status(e)),
                (Ok(()), Ok(())) => None,
            };
            let _ = tx.send(Ok(proto::PublishResponse { accepted_seq: accepted, durable_seq: durable })).await;
            if let Some(mut e) = end {
                e.metadata_mut().insert(DURABLE_SEQ_METADATA, durable.into());
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Appends a batch of publish messages in order; a refused frame or a bad message ends the
/// stream with a clear status (everything accepted before it is kept and sealed).
///
/// Runs on a runtime worker. Most appends encrypt into memory and at most hand one 256 KiB
/// buffer to the page cache (tens of microseconds); the few that may wait for fsyncs (a
/// segment created or sealed, a per-key-frame fsync) run under `block_in_place`, so that
/// other calls keep their worker. Handing every frame to a blocking thread cost more CPU in
/// thread hand-offs than the appends themselves (BENCHMARKS.md).
fn apply_publish(
    server: &Server,
    camera: &str,
    writer: &mut storage_core::StreamWriter,
    codec: &mut Codec,
    batch: Vec<proto::PublishRequest>,
    accepted: &mut u64,
) -> Result<(), Status> {
    // Counted per batch: the metrics map is one lock shared by every camera.
    let (mut frames, mut bytes) = (0u64, 0u64);
    let counted = |frames: u64, bytes: u64, refused: u64| {
        server.metrics.camera(camera, |c| {
            c.frames += frames;
            c.bytes += bytes;
            c.refused += refused;
        })
    };
    let append =
        |writer: &mut storage_core::StreamWriter, codec: Codec, f: &proto::Frame, frames: &mut u64, bytes: &mut u64, accepted: &mut u64| {
            // Checked at the door: a payload that is not an access unit of the stream's codec
            // would be stored and then dropped by every export.
            h26x::check_access_unit(codec, &f.payload).map_err(|e| {
                counted(*frames, *bytes, 1);
                Status::invalid_argument(format!("frame at {} us for {camera}: {e}", f.ts_us))
            })?;
            let frame = FrameIn { ts_us: f.ts_us, pts_90k: f.pts_90k, key: f.key, payload: &f.payload };
            let appended = if writer.append_may_wait(f.ts_us, f.key, f.payload.len()) {
                tokio::task::block_in_place(|| writer.append(frame))
            } else {
                writer.append(frame)
            };
            let seq = appended.map_err(|e| {
                counted(*frames, *bytes, 1);
                status(e)
            })?;
            *accepted = seq;
            *frames += 1;
            *bytes += f.payload.len() as u64;
            Ok::<(), Status>(())
        };
    for msg in batch {
        match msg.msg {
            Some(proto::publish_request::Msg::Frame(f)) => append(writer, *codec, &f, &mut frames, &mut bytes, accepted)?,
            Some(proto::publish_request::Msg::CodecChange(c)) => {
                let changed = codec_from(c.codec).and_then(|new| {
                    h26x::sample_description(new, &c.config).map_err(|e| Status::invalid_argument(format!("codec change: {e}")))?;
                    writer.set_codec_config(new, &c.config).map_err(status)?;
                    *codec = new;
                    Ok(())
                });
                if let Err(e) = changed {
                    counted(frames, bytes, 0);
                    return Err(e);
                }
            }
            Some(proto::publish_request::Msg::Open(_)) | None => {
                counted(frames, bytes, 0);
                return Err(Status::invalid_argument("a stream is opened once; send frames"));
            }
        }
    }
    counted(frames, bytes, 0);
    Ok(())
}

#[tonic::async_trait]
impl proto::catalog_server::Catalog for Api {
    async fn put_camera(&self, req: Request<proto::PutCameraRequest>) -> Result<Response<proto::Camera>, Status> {
        let p = self.0.authenticate(&req)?;
        Server::require(&p, Role::Admin)?;
        let c = req.into_inner().camera.ok_or_else(|| Status::invalid_argument("camera is required"))?;
        if c.id.is_empty() || c.owning_unit.is_empty() {
            return Err(Status::invalid_argument("a camera needs an id and an owning unit"));
        }
        // The store's own rule, checked here: a registered camera the store refuses could
        // never record.
        storage_core::check_camera_id(&c.id).map_err(status)?;
        let info = CameraInfo {
            id: c.id,
            owning_unit: c.owning_unit,
            sectors: c.sectors,
            location: c.location,
            model: c.model,
            certification: c.certification,
            metadata_updated_us: now_us(),
        };
        {
            let mut cams = self.0.cameras.lock().map_err(|_| Status::internal("camera lock"))?;
            cams.cameras.insert(info.id.clone(), info.clone());
            save(&self.0.dir.join("cameras.json"), &*cams).map_err(Status::internal)?;
        }
        self.0.audit(AuditRecord {
            actor: p.name,
            action: "camera.put".into(),
            cameras: vec![info.id.clone()],
            detail: serde_json::to_value(&info).unwrap_or_default(),
            ..AuditRecord::default()
        })?;
        Ok(Response::new(camera_to_proto(&info)))
    }

    async fn get_camera(&self, req: Request<proto::GetCameraRequest>) -> Result<Response<proto::Camera>, Status> {
        let p = self.0.authenticate(&req)?;
        let c = self.0.camera(&req.get_ref().id)?;
        if !(p.has(Role::Admin) || Server::in_scope(&p, &c)) {
            return Err(Status::permission_denied(format!("camera {} is outside {}'s scope", c.id, p.name)));
        }
        Ok(Response::new(camera_to_proto(&c)))
    }

    async fn list_cameras(&self, req: Request<proto::ListCamerasRequest>) -> Result<Response<proto::ListCamerasResponse>, Status> {
        let p = self.0.authenticate(&req)?;
        let cams = self.0.cameras.lock().map_err(|_| Status::internal("camera lock"))?;
        let cameras = cams.cameras.values().filter(|c| p.has(Role::Admin) || Server::in_scope(&p, c)).map(camera_to_proto).collect();
        Ok(Response::new(proto::ListCamerasResponse { cameras }))
    }

    async fn list_recordings(&self, req: Request<proto::ListRecordingsRequest>) -> Result<Response<proto::ListRecordingsResponse>, Status> {
        let p = self.0.authenticate(&req)?;
        let r = req.into_inner();
        let c = self.0.camera(&r.camera)?;
        if !(p.has(Role::Admin) || Server::in_scope(&p, &c)) {
            return Err(Status::permission_denied(format!("camera {} is outside {}'s scope", c.id, p.name)));
        }
        let to = if r.to_us == 0 { i64::MAX } else { r.to_us };
        let rec = self.0.store.recordings(&r.camera, r.from_us, to).map_err(status)?;
        let conv = |v: Vec<storage_core::Span>| v.into_iter().map(|s| proto::TimeRange { from_us: s.start_us, to_us: s.end_us }).collect();
        Ok(Response::new(proto::ListRecordingsResponse { spans: conv(rec.spans), gaps: conv(rec.gaps) }))
    }

    async fn camera_health(&self, req: Request<proto::CameraHealthRequest>) -> Result<Response<proto::CameraHealthResponse>, Status> {
        let p = self.0.authenticate(&req)?;
        let id = req.into_inner().camera;
        let c = self.0.camera(&id)?;
        if !(p.has(Role::Admin) || Server::in_scope(&p, &c)) {
            return Err(Status::permission_denied(format!("camera {id} is outside {}'s scope", p.name)));
        }
        let now = now_us();
        let day = 86_400_000_000;
        let segs = match self.0.store.segments(&id, now - day, i64::MAX) {
            Ok(s) => s,
            Err(Error::NotFound(_)) => Vec::new(),
            Err(e) => return Err(status(e)),
        };
        let last = segs.iter().map(|s| s.last_ts_us).max().unwrap_or(0);
        let (bytes, span): (u64, i64) = segs
            .iter()
            .filter_map(|s| s.sealed.map(|i| (i.payload_bytes, i.last_ts_us.saturating_sub(i.first_ts_us))))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let rec = self.0.store.recordings(&id, now - day, now).map_err(status)?;
        let offline_since = if last == 0 || now - last > 60_000_000 { last } else { 0 };
        Ok(Response::new(proto::CameraHealthResponse {
            camera: id,
            last_frame_us: last,
            bitrate_bps: if span > 0 { bytes as f64 * 8.0 / (span as f64 / 1e6) } else { 0.0 },
            gaps_last_24h: rec.gaps.len() as u32,
            offline_since_us: offline_since,
        }))
    }
}

fn item_to_proto(i: ReadItem) -> proto::ReadItem {
    proto::ReadItem {
        item: Some(match i {
            ReadItem::Config(c) => proto::read_item::Item::Config(proto::CodecConfig { codec: codec_to(c.codec), config: c.data.to_vec() }),
            ReadItem::Frame(f) => {
                proto::read_item::Item::Frame(proto::Frame { ts_us: f.ts_us, pts_90k: f.pts_90k, key: f.key, payload: f.payload })
            }
        }),
    }
}

/// Where a read (or a live follow) has got to.
struct FollowAt {
    from_us: i64,
    last_ts: i64,
    /// The codec configuration last sent: a follow sends it again only when it changes.
    last_config: Option<(Codec, bytes::Bytes)>,
}

/// Sends every durable item of `camera` after `at`; `None` when the call is over (finished,
/// failed, or the client went away).
fn read_pass(
    server: &Server,
    camera: &str,
    mut at: FollowAt,
    to: i64,
    follow: bool,
    tx: &mpsc::Sender<Result<proto::ReadItem, Status>>,
) -> Option<FollowAt> {
    let reader = match server.store.read(camera, at.from_us, to) {
        Ok(rd) => Some(rd),
        Err(Error::NotFound(_)) if follow => None,
        Err(e) => {
            let _ = tx.blocking_send(Err(status(e)));
            return None;
        }
    };
    for item in reader.into_iter().flatten() {
        let item = match item {
            Ok(i) => i,
            Err(e) => {
                let _ = tx.blocking_send(Err(status(e)));
                return None;
            }
        };
        match &item {
            ReadItem::Frame(f) => {
                if f.ts_us <= at.last_ts {
                    continue;
                }
                at.last_ts = f.ts_us;
            }
            ReadItem::Config(c) => {
                let this = (c.codec, c.data.clone());
                if at.last_config.as_ref() == Some(&this) {
                    // Every re-read starts with the configuration in force; send it once.
                    continue;
                }
                at.last_config = Some(this);
            }
        }
        if tx.blocking_send(Ok(item_to_proto(item))).is_err() {
            return None;
        }
    }
    if at.last_ts != i64::MIN {
        at.from_us = at.last_ts.saturating_add(1);
    }
    (!tx.is_closed()).then_some(at)
}

#[tonic::async_trait]
impl proto::playback_server::Playback for Api {
    type ReadFramesStream = BoxStream<proto::ReadItem>;

    async fn read_frames(&self, req: Request<proto::ReadFramesRequest>) -> Result<Response<Self::ReadFramesStream>, Status> {
        let (p, token_id) = self.0.authenticate_call(&req)?;
        let r = req.into_inner();
        let c = self.0.camera(&r.camera)?;
        let access = r.access.unwrap_or_default();
        let grant = self.0.authorize_read(&p, &c, &access)?;
        let to = if r.to_us == 0 { i64::MAX } else { r.to_us };
        let action = if r.follow { "video.follow" } else { "video.read" };
        self.0.audit_read(&p, action, &r.camera, r.from_us, to, &access, &grant, serde_json::Value::Null)?;
        let (tx, rx) = mpsc::channel(16);
        let server = self.0.clone();
        let mut durable = self.0.durable.clone();
        // One pass reads what is durable on a blocking thread (the reads are file I/O); between
        // passes a follow waits on the store's durability signal, holding no thread.
        tokio::spawn(async move {
            let mut at = FollowAt { from_us: r.from_us, last_ts: i64::MIN, last_config: None };
            let revoked = server.watch_revocation(&token_id);
            tokio::pin!(revoked);
            loop {
                durable.borrow_and_update();
                let (server, tx_pass, camera) = (server.clone(), tx.clone(), r.camera.clone());
                let follow = r.follow;
                let pass = tokio::task::spawn_blocking(move || read_pass(&server, &camera, at, to, follow, &tx_pass)).await;
                let Ok(Some(next)) = pass else { return };
                at = next;
                if !r.follow {
                    return;
                }
                tokio::select! {
                    changed = durable.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    () = &mut revoked => {
                        let _ = tx.send(Err(Status::unauthenticated("the token was revoked"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl proto::export_server::Export for Api {
    type ExportClipStream = BoxStream<proto::ExportChunk>;

    async fn export_clip(&self, req: Request<proto::ExportRequest>) -> Result<Response<Self::ExportClipStream>, Status> {
        let p = self.0.authenticate(&req)?;
        let mut r = req.into_inner();
        // Checked first: a request for a digest the server does not offer is refused before
        // anything is read or audited.
        let digest = DigestAlgorithm::parse(&r.digest).map_err(Status::invalid_argument)?;
        let c = self.0.camera(&r.camera)?;
        let access = r.access.take().unwrap_or_default();
        let mut grant = self.0.authorize_read(&p, &c, &access)?;
        if !Server::in_scope(&p, &c) && access.approval_ref.trim().is_empty() {
            return Err(Status::permission_denied("an export outside one's scope needs an approval reference (TN 8.1)"));
        }
        if r.from_us >= r.to_us {
            return Err(Status::invalid_argument("the export range must end after it starts"));
        }
        // A request that finds no video is audited as that, not as an export.
        let found = self.0.store.recordings(&r.camera, r.from_us, r.to_us).map_err(status)?;
        if found.spans.is_empty() {
            let detail = serde_json::json!({ "found": "no video in the range" });
            self.0.audit_read(&p, "video.export.none", &r.camera, r.from_us, r.to_us, &access, &grant, detail)?;
            return Err(Status::not_found(format!("no video of {} in the range", r.camera)));
        }
        let reader = self.0.store.read(&r.camera, r.from_us, r.to_us).map_err(status)?;
        // Audited before the first byte leaves: an export the client abandons halfway has been
        // read all the same. The digest follows in a second entry once the manifest is signed.
        let detail = serde_json::json!({ "digest_algorithm": digest.name() });
        self.0.audit_read(&p, "video.export", &r.camera, r.from_us, r.to_us, &access, &grant, detail)?;
        let (tx, rx) = mpsc::channel(4);
        let server = self.0.clone();
        let justification = std::mem::take(&mut grant.justification);
        tokio::task::spawn_blocking(move || {
            let result = export(&server, reader, &r, digest, &p, &access, &justification, &tx);
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Where an export's MP4 goes once muxed: into the manifest's digest, then onto the wire in
/// `EXPORT_CHUNK_BYTES` chunks.
enum ExportSink {
    /// Digested on the muxing thread, while the fragment it has just written is still in its
    /// cache. For BLAKE3 (about 0.1 CPU s/GB) this beat a hashing thread: the one-hour export
    /// went from 0.70-0.72 to 0.73-0.87 of the raw read, with a third fewer threads contending
    /// for the cores and no hand-off per fragment (docs/decisions/benchmark-history.md, History).
    Inline { hasher: FileHasher, wire: mpsc::Sender<Result<proto::ExportChunk, Status>> },
    /// Digested on a thread of its own, which also sends: SHA-256 (about 0.5 CPU s/GB) costs
    /// more than reading, decrypting and muxing together, and on the muxing thread it took the
    /// export from 0.45-0.48 to 0.37-0.44 of the raw read.
    Thread { fragments: std::sync::mpsc::SyncSender<bytes::Bytes>, hashing: std::thread::JoinHandle<Result<String, Status>> },
}

impl ExportSink {
    fn new(digest: DigestAlgorithm, wire: &mpsc::Sender<Result<proto::ExportChunk, Status>>) -> Result<Self, Status> {
        let wire = wire.clone();
        if !digest.costs_more_than_muxing() {
            return Ok(Self::Inline { hasher: digest.hasher(), wire });
        }
        let (fragments, fragments_rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(EXPORT_PIPELINE_PIECES);
        let hashing = std::thread::Builder::new()
            .name("camvault-export-hash".into())
            .spawn(move || -> Result<String, Status> {
                let mut hasher = digest.hasher();
                for bytes in fragments_rx {
                    hasher.update(&bytes);
                    send_export_chunks(&wire, bytes)?;
                }
                Ok(hasher.finalize_hex())
            })
            .map_err(|e| Status::internal(format!("cannot start the export's hashing thread: {e}")))?;
        Ok(Self::Thread { fragments, hashing })
    }

    /// Digests and sends the next bytes of the file, or queues them for the hashing thread.
    fn send(&mut self, bytes: Vec<u8>) -> Result<(), Status> {
        match self {
            Self::Inline { hasher, wire } => {
                hasher.update(&bytes);
                send_export_chunks(wire, bytes.into())
            }
            Self::Thread { fragments, .. } => fragments.send(bytes.into()).map_err(|_| Status::cancelled("the client went away")),
        }
    }

    /// The digest of the whole file, once every byte has been queued for the wire.
    fn finish(self) -> Result<String, Status> {
        match self {
            Self::Inline { hasher, .. } => Ok(hasher.finalize_hex()),
            Self::Thread { fragments, hashing } => {
                // Closing the queue lets the hashing thread finish.
                drop(fragments);
                hashing.join().map_err(|_| Status::internal("the export's hashing thread panicked"))?
            }
        }
    }
}

/// Furthest a frame's presentation time may stray from its decode time and still continue its
/// run in an export: 10 s at 90 kHz, far more than any reordering delay or clock drift, far less
/// than the jump of a camera whose clock restarted at 0.
const RUN_DRIFT_90K_MAX: i64 = 10 * 90_000;

/// Microseconds since `origin_us` on a 90 kHz clock, saturating.
fn to_90k_since(us: i64, origin_us: i64) -> i64 {
    (i128::from(us.saturating_sub(origin_us)) * 9 / 100) as i64
}

fn send_export_chunks(wire: &mpsc::Sender<Result<proto::ExportChunk, Status>>, bytes: bytes::Bytes) -> Result<(), Status> {
    for start in (0..bytes.len()).step_by(EXPORT_CHUNK_BYTES) {
        let chunk = bytes.slice(start..(start + EXPORT_CHUNK_BYTES).min(bytes.len()));
        wire.blocking_send(Ok(proto::ExportChunk { part: Some(proto::export_chunk::Part::Mp4(chunk)) }))
            .map_err(|_| Status::cancelled("the client went away"))?;
    }
    Ok(())
}

/// Streams the MP4 (init segment, then one fragment per GOP), hashing as it goes, then the
/// signed manifest; audits the export with its digest.
#[allow(clippy::too_many_arguments, reason = "the request, its checked digest, and the columns of its audit entry")]
fn export(
    server: &Server,
    reader: storage_core::FrameReader,
    r: &proto::ExportRequest,
    digest: DigestAlgorithm,
    p: &Principal,
    access: &proto::Access,
    justification: &str,
    tx: &mpsc::Sender<Result<proto::ExportChunk, Status>>,
) -> Result<(), Status> {
    let mut sink = ExportSink::new(digest, tx)?;
    let mut send = |bytes: Vec<u8>| sink.send(bytes);
    let mut codec = None;
    let mut first_dts_us = None;
    let mut start_key_us = None;
    let mut frames = 0u64;
    let mut seq = 0u32;
    let mut pending: Vec<(i64, Option<i64>, bool, bytes::Bytes)> = Vec::new();
    let mut pending_bytes = 0usize;
    let mut last_duration = 3600u32;
    let mut reorder_90k: Option<i64> = None;
    // Pending frames carry their presentation time already on the export's 90 kHz timeline
    // (see `run` below), or none.
    let mut flush = |pending: &mut Vec<(i64, Option<i64>, bool, bytes::Bytes)>,
                     next_dts_us: Option<i64>,
                     codec: Codec,
                     first_dts: i64,
                     send: &mut dyn FnMut(Vec<u8>) -> Result<(), Status>|
     -> Result<(), Status> {
        if pending.is_empty() {
            return Ok(());
        }
        let to90k = |us: i64| to_90k_since(us, first_dts);
        // Reorder delay (B-frames): fixed from the first fragment so presentation never precedes
        // decoding; the manifest's times stay those of the store.
        if reorder_90k.is_none() {
            let k = pending.iter().filter_map(|(ts, pts, _, _)| Some(to90k(*ts).saturating_sub(*pts.as_ref()?))).max().unwrap_or(0);
            reorder_90k = Some(k.max(0));
        }
        let k = reorder_90k.unwrap_or(0);
        // Start codes (3 or 4 bytes) become 4-byte lengths. An eighth more than the payloads
        // holds real frames (a handful of NAL units each); anything else grows the buffer.
        let mut data = Vec::with_capacity(pending.iter().map(|p| p.3.len() + p.3.len() / 8 + 8).sum());
        let mut samples = Vec::with_capacity(pending.len());
        for i in 0..pending.len() {
            let (ts, pts, key, ref payload) = pending[i];
            let dts = to90k(ts);
            let next = pending.get(i + 1).map(|x| to90k(x.0)).or(next_dts_us.map(to90k));
            let duration = next.map_or(last_duration, |n| n.saturating_sub(dts).clamp(1, u32::MAX as i64) as u32);
            last_duration = duration;
            let cto = match pts {
                Some(pt) => pt.saturating_sub(dts).saturating_add(k).clamp(0, i32::MAX as i64) as i32,
                None => 0,
            };
            let before = data.len();
            h26x::to_length_prefixed(codec, payload, &mut data);
            samples.push(mp4::Sample { size: (data.len() - before) as u32, duration, key, cto });
        }
        seq += 1;
        let base = to90k(pending[0].0).max(0) as u64;
        send(mp4::fragment_header(seq, base, &samples, data.len()))?;
        send(data)?;
        pending.clear();
        Ok(())
    };
    // Each run of the stream keeps its own presentation-time origin: a camera that reconnects
    // restarts its 90 kHz clock, and its frames must not be presented before the previous
    // run's. A run continues while its frames' presentation times stay within
    // `RUN_DRIFT_90K_MAX` of their decode times on the run's origin (a segment roll of a
    // continuous stream stays in its run); a frame outside, or the first after a change of
    // the codec configuration, starts a new run at its own decode time.
    let mut run: Option<(i64, i64)> = None;
    let mut config_changed = true;
    let mut last_config: Option<bytes::Bytes> = None;
    for item in reader {
        match item.map_err(status)? {
            ReadItem::Config(cfg) => {
                if last_config.as_ref() != Some(&cfg.data) {
                    config_changed = true;
                    last_config = Some(cfg.data.clone());
                }
                if codec.is_none() {
                    let desc = h26x::sample_description(cfg.codec, &cfg.data).map_err(Status::failed_precondition)?;
                    send(mp4::init_segment(&desc))?;
                    codec = Some(cfg.codec);
                }
            }
            ReadItem::Frame(f) => {
                let Some(c) = codec else { return Err(Status::data_loss("a frame arrived before its codec configuration")) };
                if f.codec != c {
                    // A codec switch mid-clip would need a second track: end the clip here.
                    break;
                }
                let fd = *first_dts_us.get_or_insert(f.ts_us);
                let dts_90k = to_90k_since(f.ts_us, fd);
                let on_run = |(origin, p0): (i64, i64), p: i64| origin.saturating_add(p.saturating_sub(p0));
                let breaks = match (run, f.pts_90k) {
                    (Some(r), Some(p)) => on_run(r, p).saturating_sub(dts_90k).abs() > RUN_DRIFT_90K_MAX,
                    _ => true,
                };
                if config_changed || breaks {
                    run = f.pts_90k.map(|p| (dts_90k, p));
                    config_changed = false;
                }
                let pts_90k = match (run, f.pts_90k) {
                    (Some(r), Some(p)) => Some(on_run(r, p)),
                    _ => None,
                };
                start_key_us.get_or_insert(f.ts_us);
                if f.key || pending_bytes > mp4::FRAGMENT_BYTES_MAX {
                    flush(&mut pending, Some(f.ts_us), c, fd, &mut send)?;
                    pending_bytes = 0;
                }
                pending_bytes += f.payload.len();
                pending.push((f.ts_us, pts_90k, f.key, f.payload));
                frames += 1;
            }
        }
    }
    if let (Some(c), Some(fd)) = (codec, first_dts_us) {
        flush(&mut pending, None, c, fd, &mut send)?;
    } else {
        return Err(Status::not_found(format!("no video of {} in the range", r.camera)));
    }
    let file_digest = sink.finish()?;
    let gaps = server.store.recordings(&r.camera, r.from_us, r.to_us).map(|rec| rec.gaps).map_err(status)?;
    let manifest = serde_json::json!({
        "type": "camvault-export-manifest",
        "version": 2,
        "digest_algorithm": digest.name(),
        "file_digest": file_digest,
        "camera": r.camera,
        "from_us": r.from_us,
        "to_us": r.to_us,
        "starts_at_keyframe_us": start_key_us,
        "from_offset_us": start_key_us.map(|k| r.from_us.saturating_sub(k)),
        "frames": frames,
        // Where the range holds no video (pauses longer than the store's gap_us): an export
        // with a hole in it says so.
        "gaps": gaps.iter().map(|g| serde_json::json!({ "from_us": g.start_us, "to_us": g.end_us })).collect::<Vec<_>>(),
        "exported_by": p.name,
        "requester": access.requester,
        "purpose": access.purpose,
        "approval_ref": access.approval_ref,
        "justification": justification,
        "exported_at_us": now_us(),
    })
    .to_string();
    let (signature, public_key) = server.store.sign(manifest.as_bytes()).map_err(status)?;
    server.audit_read(
        p,
        "video.export.manifest",
        &r.camera,
        r.from_us,
        r.to_us,
        access,
        &ReadGrant { justification: justification.to_string() },
        serde_json::json!({ "digest_algorithm": digest.name(), "digest": file_digest, "frames": frames }),
    )?;
    tx.blocking_send(Ok(proto::ExportChunk {
        part: Some(proto::export_chunk::Part::Manifest(proto::Manifest { json: manifest, signature, public_key })),
    }))
    .map_err(|_| Status::cancelled("the client went away"))
}

fn hold_to_proto(h: &storage_core::retention::Hold) -> proto::Hold {
    proto::Hold {
        id: h.id,
        case_ref: h.request.case_ref.clone(),
        cameras: h.request.cameras.clone(),
        from_us: h.request.from_us,
        to_us: h.request.to_us,
        placed_by: h.request.placed_by.clone(),
        reason: h.request.reason.clone(),
        placed_us: h.placed_us,
        released: h.released.is_some(),
        released_by: h.released.as_ref().map(|r| r.by.clone()).unwrap_or_default(),
        release_reason: h.released.as_ref().map(|r| r.reason.clone()).unwrap_or_default(),
        protected_json: serde_json::to_string(&h.protected).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl proto::holds_server::Holds for Api {
    async fn place_hold(&self, req: Request<proto::PlaceHoldRequest>) -> Result<Response<proto::Hold>, Status> {
        let p = self.0.authenticate(&req)?;
        if !(p.has(Role::Admin) || p.has(Role::Operator)) {
            return Err(Status::permission_denied(format!("{} may not place legal holds", p.name)));
        }
        let r = req.into_inner();
        // A hold on a camera that is not registered protects nothing: refused, naming it.
        for c in &r.cameras {
            let cam = self.0.camera(c)?;
            if p.has(Role::Operator) && !p.has(Role::Admin) && !Server::in_scope(&p, &cam) {
                return Err(Status::permission_denied(format!("camera {c} is outside {}'s unit", p.name)));
            }
        }
        let store = self.0.store.clone();
        let hold = tokio::task::spawn_blocking(move || {
            store.place_hold(HoldRequest {
                case_ref: r.case_ref,
                cameras: r.cameras,
                from_us: r.from_us,
                to_us: r.to_us,
                placed_by: p.name,
                reason: r.reason,
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)?;
        Ok(Response::new(hold_to_proto(&hold)))
    }

    async fn release_hold(&self, req: Request<proto::ReleaseHoldRequest>) -> Result<Response<proto::Hold>, Status> {
        let p = self.0.authenticate(&req)?;
        Server::require(&p, Role::Admin)?;
        let r = req.into_inner();
        let hold = self.0.store.release_hold(r.id, &p.name, &r.reason).map_err(status)?;
        Ok(Response::new(hold_to_proto(&hold)))
    }

    async fn list_holds(&self, req: Request<proto::ListHoldsRequest>) -> Result<Response<proto::ListHoldsResponse>, Status> {
        let p = self.0.authenticate(&req)?;
        if p.has(Role::Ingest) && p.roles.len() == 1 {
            return Err(Status::permission_denied("ingest credentials do not list holds"));
        }
        let holds = self.0.store.holds(req.get_ref().include_released).map_err(status)?;
        Ok(Response::new(proto::ListHoldsResponse { holds: holds.iter().map(hold_to_proto).collect() }))
    }
}

#[tonic::async_trait]
impl proto::retention_server::Retention for Api {
    async fn get_retention(&self, req: Request<proto::GetRetentionRequest>) -> Result<Response<proto::RetentionPolicy>, Status> {
        let _p = self.0.authenticate(&req)?;
        let camera = req.into_inner().camera;
        // A typo'd camera would get the default as if it were its own.
        self.0.camera(&camera)?;
        let days = self.0.store.retention_days(&camera).map_err(status)?;
        Ok(Response::new(proto::RetentionPolicy { camera, days }))
    }

    async fn set_retention(&self, req: Request<proto::SetRetentionRequest>) -> Result<Response<proto::RetentionPolicy>, Status> {
        let p = self.0.authenticate(&req)?;
        Server::require(&p, Role::Admin)?;
        let r = req.into_inner();
        self.0.camera(&r.camera)?;
        self.0.store.set_retention(&r.camera, r.days, &p.name, &r.reason).map_err(status)?;
        Ok(Response::new(proto::RetentionPolicy { camera: r.camera, days: r.days }))
    }

    async fn sweep(&self, req: Request<proto::SweepRequest>) -> Result<Response<proto::SweepResponse>, Status> {
        let p = self.0.authenticate(&req)?;
        Server::require(&p, Role::Admin)?;
        let store = self.0.store.clone();
        let report =
            tokio::task::spawn_blocking(move || store.sweep()).await.map_err(|e| Status::internal(e.to_string()))?.map_err(status)?;
        Ok(Response::new(proto::SweepResponse {
            erased_segments: report.erased() as u64,
            held_back: report.held_back as u64,
            receipts_json: serde_json::to_string(&report.receipts).unwrap_or_default(),
        }))
    }
}

#[tonic::async_trait]
impl proto::audit_server::Audit for Api {
    async fn query(&self, req: Request<proto::AuditQueryRequest>) -> Result<Response<proto::AuditQueryResponse>, Status> {
        let p = self.0.authenticate(&req)?;
        Server::require(&p, Role::Auditor)?;
        let r = req.into_inner();
        let q = AuditQuery {
            from_us: (r.from_us != 0).then_some(r.from_us),
            to_us: (r.to_us != 0).then_some(r.to_us),
            actor: (!r.actor.is_empty()).then_some(r.actor),
            action: (!r.action.is_empty()).then_some(r.action),
            camera: (!r.camera.is_empty()).then_some(r.camera),
            limit: (r.limit != 0).then_some(r.limit as usize),
        };
        let entries = self.0.store.audit_query(&q).map_err(status)?;
        Ok(Response::new(proto::AuditQueryResponse {
            entries_json: entries.iter().map(|e| serde_json::to_string(e).unwrap_or_default()).collect(),
        }))
    }

    async fn verify(&self, req: Request<proto::AuditVerifyRequest>) -> Result<Response<proto::AuditVerifyResponse>, Status> {
        let p = self.0.authenticate(&req)?;
        Server::require(&p, Role::Auditor)?;
        let v = self.0.store.verify_audit().map_err(status)?;
        Ok(Response::new(proto::AuditVerifyResponse {
            entries: v.entries,
            checkpoints: v.checkpoints,
            ok: v.problem.is_none(),
            problem: v
                .problem
                .map(|(offset, seq, what)| match seq {
                    Some(seq) => format!("entry {seq} at byte offset {offset}: {what}"),
                    None => format!("at byte offset {offset}: {what}"),
                })
                .unwrap_or_default(),
            head_hash: v.head_hash,
            public_key: self.0.store.signing_public_key().map_err(status)?,
        }))
    }

    async fn server_key(&self, req: Request<proto::ServerKeyRequest>) -> Result<Response<proto::ServerKeyResponse>, Status> {
        // Any principal: the key is public, and whoever receives an export or a certificate
        // needs it to check the signature against a key they trust rather than the one inside.
        self.0.authenticate(&req)?;
        let public_key = self.0.store.signing_public_key().map_err(status)?;
        let fingerprint = key_fingerprint(&public_key).map_err(Status::internal)?;
        Ok(Response::new(proto::ServerKeyResponse { public_key, fingerprint }))
    }
}

/// A signing key's fingerprint for people to compare: the first 16 hex digits of SHA-256 of the
/// key's 32 bytes, grouped `xxxx:xxxx:xxxx:xxxx` (64 bits: enough to tell keys apart by eye,
/// short enough to read over the phone).
pub fn key_fingerprint(public_key_hex: &str) -> Result<String, String> {
    let key = storage_core::signing::unhex::<32>(public_key_hex.trim())
        .ok_or_else(|| format!("{public_key_hex:?} is not an Ed25519 public key (64 hex digits)"))?;
    let digest = sha256_hex(&key);
    Ok([&digest[0..4], &digest[4..8], &digest[8..12], &digest[12..16]].join(":"))
}

#[tonic::async_trait]
impl proto::admin_server::Admin for Api {
    async fn create_token(&self, req: Request<proto::CreateTokenRequest>) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let p = self.0.authenticate(&req)?;
        Server::require(&p, Role::Admin)?;
        let pp = req.into_inner().principal.ok_or_else(|| Status::invalid_argument("principal is required"))?;
        if pp.name.trim().is_empty() || pp.unit.trim().is_empty() || pp.roles.is_empty() {
            return Err(Status::invalid_argument("a principal needs a name, a unit and at least one role"));
        }
        let roles = pp.roles.iter().map(|r| Role::parse(r)).collect::<Result<Vec<_>, _>>().map_err(Status::invalid_argument)?;
        let principal = Principal { name: pp.name, unit: pp.unit, roles, sectors: pp.sectors, cameras: pp.cameras };
        let secret = new_secret().map_err(Status::internal)?;
        let id = {
            let mut t = self.0.tokens.lock().map_err(|_| Status::internal("token lock"))?;
            let id = format!("t{}", t.tokens.len() + 1);
            t.tokens.push(TokenRecord {
                id: id.clone(),
                sha256: sha256_hex(secret.as_bytes()),
                principal: principal.clone(),
                created_us: now_us(),
                revoked: false,
            });
            save(&self.0.dir.join("tokens.json"), &*t).map_err(Status::internal)?;
            id
        };
        self.0.audit(AuditRecord {
            actor: p.name,
            action: "token.create".into(),
            detail: serde_json::json!({ "token_id": id, "principal": principal }),
            ..AuditRecord::default()
        })?;
        Ok(Response::new(proto::CreateTokenResponse { token: secret, token_id: id }))
    }

    async fn revoke_token(&self, req: Request<proto::RevokeTokenRequest>) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        let p = self.0.authenticate(&req)?;
        Server::require(&p, Role::Admin)?;
        let id = req.into_inner().token_id;
        {
            let mut t = self.0.tokens.lock().map_err(|_| Status::internal("token lock"))?;
            let rec = t.tokens.iter_mut().find(|r| r.id == id).ok_or_else(|| Status::not_found(format!("no token {id}")))?;
            rec.revoked = true;
            save(&self.0.dir.join("tokens.json"), &*t).map_err(Status::internal)?;
        }
        // Calls the token opened end within a second (`Server::watch_revocation`).
        self.0.revocations.send_modify(|n| *n = n.wrapping_add(1));
        self.0.audit(AuditRecord {
            actor: p.name,
            action: "token.revoke".into(),
            detail: serde_json::json!({ "token_id": id }),
            ..AuditRecord::default()
        })?;
        Ok(Response::new(proto::RevokeTokenResponse {}))
    }

    async fn list_tokens(&self, req: Request<proto::ListTokensRequest>) -> Result<Response<proto::ListTokensResponse>, Status> {
        let p = self.0.authenticate(&req)?;
        Server::require(&p, Role::Admin)?;
        let t = self.0.tokens.lock().map_err(|_| Status::internal("token lock"))?;
        let tokens = t
            .tokens
            .iter()
            .map(|r| proto::TokenInfo {
                token_id: r.id.clone(),
                principal: Some(to_proto_principal(&r.principal)),
                created_us: r.created_us,
                revoked: r.revoked,
            })
            .collect();
        Ok(Response::new(proto::ListTokensResponse { tokens }))
    }

    async fn decommission(&self, req: Request<proto::DecommissionRequest>) -> Result<Response<proto::DecommissionResponse>, Status> {
        let p = self.0.authenticate(&req)?;
        Server::require(&p, Role::Admin)?;
        let reason = req.into_inner().reason;
        let store = self.0.store.clone();
        let cert = tokio::task::spawn_blocking(move || store.decommission(&p.name, &reason))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status)?;
        Ok(Response::new(proto::DecommissionResponse {
            certificate_json: cert.document,
            signature: cert.signature,
            public_key: cert.public_key,
        }))
    }
}
