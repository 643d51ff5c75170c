//! The client verbs of `camvault`: gRPC calls with a bearer token, plus offline
//! `verify-export`.

use std::path::Path;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::h26x;
use crate::proto;
use crate::time::{format_rfc3339, parse_rfc3339};
use crate::Args;

type Auth = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
type Chan = InterceptedService<Channel, Auth>;

async fn connect(args: &Args) -> Result<Chan, String> {
    let addr = args
        .value("--server")
        .map(String::from)
        .or_else(|| std::env::var("CAMVAULT_SERVER").ok())
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let token = args
        .value("--token")
        .map(String::from)
        .or_else(|| std::env::var("CAMVAULT_TOKEN").ok())
        .ok_or("a token is required: --token or CAMVAULT_TOKEN")?;
    let mut endpoint = camvault_server::conn::client_endpoint(Channel::from_shared(addr.clone()).map_err(|e| e.to_string())?);
    let opt = |flag: &str, env: &str| args.value(flag).map(String::from).or_else(|| std::env::var(env).ok());
    if let Some(ca) = opt("--ca", "CAMVAULT_CA") {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |p: &str| std::fs::read(p).map_err(|e| format!("cannot read {p}: {e}"));
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&ca)?));
        if let (Some(c), Some(k)) = (opt("--cert", "CAMVAULT_CERT"), opt("--key", "CAMVAULT_KEY")) {
            tls = tls.identity(Identity::from_pem(read(&c)?, read(&k)?));
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
    let header: MetadataValue<_> = format!("Bearer {token}").parse().map_err(|_| "the token is not a valid header value")?;
    let auth: Auth = Box::new(move |mut req: Request<()>| {
        req.metadata_mut().insert("authorization", header.clone());
        Ok(req)
    });
    Ok(InterceptedService::new(channel, auth))
}

fn time_arg(args: &Args, name: &str, default: i64) -> Result<i64, String> {
    args.value(name).map_or(Ok(default), parse_rfc3339)
}

fn access(args: &Args) -> Result<proto::Access, String> {
    let justification = match args.value("--justification").unwrap_or("none") {
        "none" => proto::Justification::None,
        "emergency" => proto::Justification::EmergencyCommand,
        "repair" => proto::Justification::ConnectionFaultRepair,
        "written-request" => proto::Justification::WrittenRequest,
        other => return Err(format!("--justification {other:?}: none, emergency, repair or written-request")),
    };
    Ok(proto::Access {
        purpose: args.value("--purpose").unwrap_or_default().into(),
        requester: args.value("--requester").unwrap_or_default().into(),
        approval_ref: args.value("--approval").unwrap_or_default().into(),
        justification: justification as i32,
        document_ref: args.value("--document").unwrap_or_default().into(),
    })
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

pub async fn run(verb: &str, args: &Args) -> Result<(), String> {
    match verb {
        "ingest" => ingest(args).await,
        "recordings" => {
            let mut c = proto::catalog_client::CatalogClient::new(connect(args).await?);
            let camera = args.value("--camera").ok_or("--camera is required")?.to_string();
            let r = c
                .list_recordings(proto::ListRecordingsRequest {
                    camera,
                    from_us: time_arg(args, "--from", 0)?,
                    to_us: time_arg(args, "--to", 0)?,
                })
                .await
                .map_err(st)?
                .into_inner();
            for s in r.spans {
                println!("recorded {} .. {}", format_rfc3339(s.from_us), format_rfc3339(s.to_us));
            }
            Ok(())
        }
        "export" => export(args).await,
        "play" => {
            let mut c = proto::playback_client::PlaybackClient::new(connect(args).await?)
                .max_decoding_message_size(crate::server::MESSAGE_BYTES_MAX);
            let camera = args.value("--camera").ok_or("--camera is required")?.to_string();
            let mut s = c
                .read_frames(proto::ReadFramesRequest {
                    camera,
                    from_us: time_arg(args, "--from", 0)?,
                    to_us: time_arg(args, "--to", 0)?,
                    follow: args.flag("--follow"),
                    access: Some(access(args)?),
                })
                .await
                .map_err(st)?
                .into_inner();
            let mut frames = 0u64;
            while let Some(item) = s.message().await.map_err(st)? {
                if let Some(proto::read_item::Item::Frame(f)) = item.item {
                    frames += 1;
                    if args.flag("--verbose") {
                        println!("{} key={} {} bytes", format_rfc3339(f.ts_us), f.key, f.payload.len());
                    }
                }
            }
            println!("{frames} frames");
            Ok(())
        }
        "hold" => hold(args).await,
        "retention" => retention(args).await,
        "audit" => audit(args).await,
        "camera" => camera(args).await,
        "token" => token(args).await,
        "verify-export" => verify_export(args),
        other => Err(format!("unknown command {other:?}")),
    }
}

/// A frame to publish: decode-time offset in µs, presentation time in 90 kHz, key, Annex B data.
type IngestFrame = (i64, i64, bool, Vec<u8>);

async fn ingest(args: &Args) -> Result<(), String> {
    let file = args.positional(0).ok_or("usage: camvault ingest FILE.h264|FILE.h265|FILE.mp4 --camera ID [--fps N] [--fast]")?;
    let camera = args.value("--camera").ok_or("--camera is required")?.to_string();
    let codec = match args.value("--codec") {
        Some("h265") | Some("hevc") => storage_core::Codec::H265,
        Some("h264") | Some("avc") => storage_core::Codec::H264,
        Some(o) => return Err(format!("--codec {o}: h264 or h265")),
        None if file.ends_with(".h265") || file.ends_with(".265") || file.ends_with(".hevc") => storage_core::Codec::H265,
        None => storage_core::Codec::H264,
    };
    let fps: u32 = args.value("--fps").map_or(Ok(25), |v| v.parse().map_err(|_| "--fps takes a number"))?;
    let fast = args.flag("--fast");
    let data = std::fs::read(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let start_us = time_arg(args, "--start", crate::now_us())?;
    let (codec, config, frames): (storage_core::Codec, Vec<u8>, Vec<IngestFrame>) = if file.ends_with(".mp4") || file.ends_with(".mov") {
        let t = crate::mp4_in::read(&data).map_err(|e| format!("{file}: {e}"))?;
        let ts = i64::from(t.timescale.max(1));
        let first_pts = t.samples.iter().map(|s| s.pts).min().unwrap_or(0);
        let frames = t.samples.into_iter().map(|s| (s.dts * 1_000_000 / ts, (s.pts - first_pts) * 90_000 / ts, s.key, s.data)).collect();
        (t.codec, t.config, frames)
    } else {
        let (aus, config) = h26x::access_units(codec, &data);
        if aus.is_empty() || config.is_empty() {
            return Err(format!(
                "{file} holds no {codec:?} access units with parameter sets (an Annex B elementary stream or an .mp4 is expected)"
            ));
        }
        let frame_us = 1_000_000 / i64::from(fps.max(1));
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
    let codec_p = if codec == storage_core::Codec::H265 { proto::Codec::H265 } else { proto::Codec::H264 } as i32;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(proto::PublishRequest {
        msg: Some(proto::publish_request::Msg::Open(proto::OpenStream {
            camera,
            codec: Some(proto::CodecConfig { codec: codec_p, config }),
        })),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut c = proto::ingest_client::IngestClient::new(connect(args).await?).max_encoding_message_size(crate::server::MESSAGE_BYTES_MAX);
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
    while let Some(a) = acks.message().await.map_err(st)? {
        durable = a.durable_seq;
        progress("ingest", durable, total, started);
    }
    let _ = sender.await;
    eprintln!();
    if durable != total {
        return Err(format!("only {durable} of {total} frames were acknowledged durable"));
    }
    println!("{total} frames ingested and durable");
    Ok(())
}

async fn export(args: &Args) -> Result<(), String> {
    let out = args.value("--out").ok_or("--out FILE.mp4 is required")?;
    let camera = args.value("--camera").ok_or("--camera is required")?.to_string();
    let from_us = time_arg(args, "--from", 0)?;
    let to_us = time_arg(args, "--to", i64::MAX)?;
    let mut c = proto::export_client::ExportClient::new(connect(args).await?).max_decoding_message_size(crate::server::MESSAGE_BYTES_MAX);
    let digest = args.value("--digest").unwrap_or_default().to_string();
    crate::digest::DigestAlgorithm::parse(&digest)?;
    let req = proto::ExportRequest { camera, from_us, to_us, access: Some(access(args)?), digest };
    let mut s = c.export_clip(req).await.map_err(st)?.into_inner();
    let tmp = format!("{out}.part");
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("cannot create {tmp}: {e}"))?;
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut manifest = None;
    while let Some(chunk) = s.message().await.map_err(st)? {
        match chunk.part {
            Some(proto::export_chunk::Part::Mp4(b)) => {
                std::io::Write::write_all(&mut f, &b).map_err(|e| e.to_string())?;
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
    std::fs::rename(&tmp, out).map_err(|e| e.to_string())?;
    let mpath = args.value("--manifest").map(String::from).unwrap_or_else(|| format!("{out}.manifest.json"));
    let doc = serde_json::json!({ "manifest": m.json, "signature": m.signature, "public_key": m.public_key });
    std::fs::write(&mpath, serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    println!("{out}: {bytes} bytes; manifest {mpath}");
    Ok(())
}

/// Checks an exported file against its signed manifest, offline.
fn verify_export(args: &Args) -> Result<(), String> {
    let (Some(file), Some(manifest)) = (args.positional(0), args.positional(1)) else {
        return Err("usage: camvault verify-export FILE.mp4 MANIFEST.json [--public-key HEX]".into());
    };
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).map_err(|e| format!("{manifest}: {e}"))?)
        .map_err(|e| format!("{manifest}: {e}"))?;
    let text = doc["manifest"].as_str().ok_or("the manifest file has no manifest")?;
    let sig = doc["signature"].as_str().ok_or("the manifest file has no signature")?;
    let pk = args.value("--public-key").or(doc["public_key"].as_str()).ok_or("no public key")?;
    if !storage_core::signing::verify_hex(pk, text.as_bytes(), sig) {
        return Err("the manifest's signature does not verify: it was altered or signed by another key".into());
    }
    let m: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let (alg, stated) = crate::digest::stated_digest(&m)?;
    let digest = alg.file_hex(Path::new(file)).map_err(|e| format!("{file}: {e}"))?;
    if digest != stated {
        return Err(format!("{file} does not match the manifest: {} {digest}, manifest says {stated}", alg.name()));
    }
    println!(
        "OK: {file} is the export of camera {} [{} .. {}) by {} for {} (purpose: {}, approval: {})",
        m["camera"], m["from_us"], m["to_us"], m["exported_by"], m["requester"], m["purpose"], m["approval_ref"]
    );
    Ok(())
}

async fn hold(args: &Args) -> Result<(), String> {
    let mut c = proto::holds_client::HoldsClient::new(connect(args).await?);
    match args.positional(0) {
        Some("place") => {
            let cameras = args.value("--cameras").ok_or("--cameras a,b is required")?.split(',').map(String::from).collect();
            let h = c
                .place_hold(proto::PlaceHoldRequest {
                    case_ref: args.value("--case").ok_or("--case is required")?.into(),
                    cameras,
                    from_us: time_arg(args, "--from", 0)?,
                    to_us: time_arg(args, "--to", i64::MAX)?,
                    reason: args.value("--reason").unwrap_or_default().into(),
                })
                .await
                .map_err(st)?
                .into_inner();
            println!("hold {} placed; protects {}", h.id, h.protected_json);
        }
        Some("release") => {
            let id = args.value("--id").and_then(|v| v.parse().ok()).ok_or("--id N is required")?;
            let h = c
                .release_hold(proto::ReleaseHoldRequest { id, reason: args.value("--reason").unwrap_or_default().into() })
                .await
                .map_err(st)?
                .into_inner();
            println!("hold {} released", h.id);
        }
        Some("list") => {
            for h in c.list_holds(proto::ListHoldsRequest { include_released: args.flag("--all") }).await.map_err(st)?.into_inner().holds {
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
        _ => return Err("usage: camvault hold place|release|list".into()),
    }
    Ok(())
}

async fn retention(args: &Args) -> Result<(), String> {
    let mut c = proto::retention_client::RetentionClient::new(connect(args).await?);
    match args.positional(0) {
        Some("get") => {
            let r = c
                .get_retention(proto::GetRetentionRequest { camera: args.value("--camera").unwrap_or_default().into() })
                .await
                .map_err(st)?
                .into_inner();
            println!("{}: {} days", r.camera, r.days);
        }
        Some("set") => {
            let days = args.value("--days").and_then(|v| v.parse().ok()).ok_or("--days N is required")?;
            let camera = args.value("--camera").ok_or("--camera is required")?.into();
            c.set_retention(proto::SetRetentionRequest { camera, days, reason: args.value("--reason").unwrap_or_default().into() })
                .await
                .map_err(st)?;
            println!("retention set to {days} days");
        }
        Some("sweep") => {
            let r = c.sweep(proto::SweepRequest {}).await.map_err(st)?.into_inner();
            println!("erased {} segments; {} expired segments held back by legal holds", r.erased_segments, r.held_back);
        }
        _ => return Err("usage: camvault retention get|set|sweep".into()),
    }
    Ok(())
}

async fn audit(args: &Args) -> Result<(), String> {
    let mut c = proto::audit_client::AuditClient::new(connect(args).await?);
    match args.positional(0) {
        Some("query") => {
            let r = c
                .query(proto::AuditQueryRequest {
                    from_us: time_arg(args, "--from", 0)?,
                    to_us: time_arg(args, "--to", 0)?,
                    actor: args.value("--actor").unwrap_or_default().into(),
                    action: args.value("--action").unwrap_or_default().into(),
                    camera: args.value("--camera").unwrap_or_default().into(),
                    limit: args.value("--limit").and_then(|v| v.parse().ok()).unwrap_or(0),
                })
                .await
                .map_err(st)?
                .into_inner();
            for e in r.entries_json {
                println!("{e}");
            }
        }
        Some("verify") => {
            let r = c.verify(proto::AuditVerifyRequest {}).await.map_err(st)?.into_inner();
            println!("{} entries, {} signed checkpoints, head {}", r.entries, r.checkpoints, r.head_hash);
            if !r.ok {
                return Err(format!("audit log damaged: {}", r.problem));
            }
        }
        _ => return Err("usage: camvault audit query|verify".into()),
    }
    Ok(())
}

async fn camera(args: &Args) -> Result<(), String> {
    let mut c = proto::catalog_client::CatalogClient::new(connect(args).await?);
    let list = |v: Option<&str>| v.map(|s| s.split(',').filter(|x| !x.is_empty()).map(String::from).collect()).unwrap_or_default();
    match args.positional(0) {
        Some("put") => {
            let cam = proto::Camera {
                id: args.value("--id").ok_or("--id is required")?.into(),
                owning_unit: args.value("--unit").ok_or("--unit is required")?.into(),
                sectors: list(args.value("--sectors")),
                location: args.value("--location").unwrap_or_default().into(),
                model: args.value("--model").unwrap_or_default().into(),
                certification: args.value("--certification").unwrap_or_default().into(),
                metadata_updated_us: 0,
            };
            let r = c.put_camera(proto::PutCameraRequest { camera: Some(cam) }).await.map_err(st)?.into_inner();
            println!("camera {} registered to {}", r.id, r.owning_unit);
        }
        Some("list") => {
            for cam in c.list_cameras(proto::ListCamerasRequest {}).await.map_err(st)?.into_inner().cameras {
                println!(
                    "{} unit={} sectors={:?} location={} certification={}",
                    cam.id, cam.owning_unit, cam.sectors, cam.location, cam.certification
                );
            }
        }
        Some("health") => {
            let h = c
                .camera_health(proto::CameraHealthRequest { camera: args.value("--camera").ok_or("--camera is required")?.into() })
                .await
                .map_err(st)?
                .into_inner();
            println!(
                "{}: last frame {}, {:.0} bit/s, {} gaps in 24 h, offline since {}",
                h.camera,
                format_rfc3339(h.last_frame_us),
                h.bitrate_bps,
                h.gaps_last_24h,
                if h.offline_since_us == 0 { "-".into() } else { format_rfc3339(h.offline_since_us) }
            );
        }
        _ => return Err("usage: camvault camera put|list|health".into()),
    }
    Ok(())
}

async fn token(args: &Args) -> Result<(), String> {
    let mut c = proto::admin_client::AdminClient::new(connect(args).await?);
    let list = |v: Option<&str>| v.map(|s| s.split(',').filter(|x| !x.is_empty()).map(String::from).collect()).unwrap_or_default();
    match args.positional(0) {
        Some("create") => {
            let p = proto::Principal {
                name: args.value("--name").ok_or("--name is required")?.into(),
                unit: args.value("--unit").ok_or("--unit is required")?.into(),
                roles: list(args.value("--roles")),
                sectors: list(args.value("--sectors")),
                cameras: list(args.value("--cameras")),
            };
            let r = c.create_token(proto::CreateTokenRequest { principal: Some(p) }).await.map_err(st)?.into_inner();
            println!("{}", r.token);
            eprintln!("token {} created; it is shown once", r.token_id);
        }
        Some("revoke") => {
            c.revoke_token(proto::RevokeTokenRequest { token_id: args.value("--id").ok_or("--id is required")?.into() })
                .await
                .map_err(st)?;
            println!("revoked");
        }
        Some("list") => {
            for t in c.list_tokens(proto::ListTokensRequest {}).await.map_err(st)?.into_inner().tokens {
                let p = t.principal.unwrap_or_default();
                println!("{} {} unit={} roles={:?} revoked={}", t.token_id, p.name, p.unit, p.roles, t.revoked);
            }
        }
        _ => return Err("usage: camvault token create|revoke|list".into()),
    }
    Ok(())
}
