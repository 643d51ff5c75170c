//! Bad input straight over gRPC (no friendly client in between): malformed and oversized
//! messages, frames out of order, unknown cameras, wrong codec data, a client that vanishes
//! mid-stream. Each gets a clear status; nothing stored is lost; the server keeps serving.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("camvault.v1");
}

use proto::publish_request::Msg;
use tonic::metadata::MetadataValue;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_camvault");
const T0: i64 = 1_795_428_000_000_000;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(addr: &str, token: &str, args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).env("CAMVAULT_SERVER", addr).env("CAMVAULT_TOKEN", token).output().expect("cli");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// H.264 parameter sets of a 320x240 stream (from x264), and one frame's worth of slice data.
fn h264_config() -> Vec<u8> {
    let sps = [
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0x20, 0xf1,
        0x42, 0x99, 0x60,
    ];
    let pps = [0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];
    let mut c = vec![0, 0, 0, 1];
    c.extend_from_slice(&sps);
    c.extend_from_slice(&[0, 0, 0, 1]);
    c.extend_from_slice(&pps);
    c
}

fn frame(ts_us: i64, key: bool, len: usize) -> proto::PublishRequest {
    let mut payload = vec![0, 0, 0, 1, if key { 0x65 } else { 0x41 }, 0x88];
    payload.resize(len.max(6), 0x5a);
    proto::PublishRequest { msg: Some(Msg::Frame(proto::Frame { ts_us, pts_90k: None, key, payload: payload.into() })) }
}

fn open(camera: &str, codec: i32, config: Vec<u8>) -> proto::PublishRequest {
    proto::PublishRequest {
        msg: Some(Msg::Open(proto::OpenStream {
            camera: camera.into(),
            codec: Some(proto::CodecConfig { codec, config }),
            backfill: true,
        })),
    }
}

#[test]
fn bad_publishers_get_clear_statuses_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port");
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--data",
            dir.path().join("data").to_str().expect("utf8"),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics",
            "",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("server");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line).expect("token");
    let _server = Killed(child);
    let admin = line.split_whitespace().find(|w| w.starts_with("cvt_")).expect("admin token").to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let addr = format!("http://127.0.0.1:{port}");
    cli(&addr, &admin, &["camera", "put", "--id", "cam-1", "--unit", "unit-1"]);
    let ingest =
        cli(&addr, &admin, &["token", "create", "--name", "edge", "--unit", "unit-1", "--roles", "ingest", "--cameras", "cam-1,ghost"]);
    let op = cli(&addr, &admin, &["token", "create", "--name", "op", "--unit", "unit-1", "--roles", "operator"]);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let ch = tonic::transport::Channel::from_shared(addr.clone()).expect("uri").connect().await.expect("connect");
        let bearer: MetadataValue<_> = format!("Bearer {ingest}").parse().expect("header");
        let client = || {
            let b = bearer.clone();
            proto::ingest_client::IngestClient::with_interceptor(ch.clone(), move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", b.clone());
                Ok(r)
            })
            .max_encoding_message_size(64 << 20)
        };
        // Publishes `msgs`; returns the final status code (Ok when the stream ended cleanly) and
        // the last durable acknowledgement.
        async fn publish<F>(mut c: proto::ingest_client::IngestClient<F>, msgs: Vec<proto::PublishRequest>) -> (Code, u64)
        where
            F: tonic::client::GrpcService<tonic::body::Body>,
            F::Error: Into<tonic::codegen::StdError>,
            F::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
            <F::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
        {
            let mut acks = match c.publish(tokio_stream::iter(msgs)).await {
                Ok(r) => r.into_inner(),
                Err(s) => return (s.code(), 0),
            };
            let mut durable = 0;
            loop {
                match acks.message().await {
                    Ok(Some(a)) => durable = a.durable_seq,
                    Ok(None) => return (Code::Ok, durable),
                    Err(s) => return (s.code(), durable),
                }
            }
        }
        let h264 = proto::Codec::H264 as i32;
        // A good stream of 50 frames.
        let good: Vec<_> =
            std::iter::once(open("cam-1", h264, h264_config())).chain((0..50).map(|n| frame(T0 + n * 40_000, n % 25 == 0, 2000))).collect();
        assert_eq!(publish(client(), good).await, (Code::Ok, 50));
        // Malformed: the first message is not an OpenStream; an empty message; an unknown codec.
        assert_eq!(publish(client(), vec![frame(T0, true, 100)]).await.0, Code::InvalidArgument);
        assert_eq!(publish(client(), vec![proto::PublishRequest { msg: None }]).await.0, Code::InvalidArgument);
        assert_eq!(publish(client(), vec![open("cam-1", 9, h264_config())]).await.0, Code::InvalidArgument);
        // Wrong codec data: H.264 parameter sets declared as H.265.
        assert_eq!(publish(client(), vec![open("cam-1", proto::Codec::H265 as i32, h264_config())]).await.0, Code::InvalidArgument);
        // A camera this credential may not publish to, and one nobody registered.
        assert_eq!(publish(client(), vec![open("cam-9", h264, h264_config())]).await.0, Code::PermissionDenied);
        assert_eq!(publish(client(), vec![open("ghost", h264, h264_config())]).await.0, Code::NotFound);
        // Frames out of order: the ones before are kept and durable, the stream ends clearly.
        let t1 = T0 + 3_600_000_000;
        let msgs =
            vec![open("cam-1", h264, h264_config()), frame(t1, true, 500), frame(t1 + 40_000, false, 500), frame(t1 + 20_000, false, 500)];
        assert_eq!(publish(client(), msgs).await.0, Code::InvalidArgument);
        // Overlapping what is stored.
        assert_eq!(publish(client(), vec![open("cam-1", h264, h264_config()), frame(T0 + 80_000, true, 500)]).await.0, Code::AlreadyExists);
        // Oversized: a frame above storage-core's 16 MiB limit.
        let t2 = T0 + 7_200_000_000;
        let big = vec![open("cam-1", h264, h264_config()), frame(t2, true, (16 << 20) + 1)];
        let code = publish(client(), big).await.0;
        assert!(matches!(code, Code::ResourceExhausted | Code::OutOfRange), "{code:?}");
        // A 5 MiB key frame (above gRPC's 4 MiB default) goes in whole.
        let t3 = T0 + 10_800_000_000;
        assert_eq!(publish(client(), vec![open("cam-1", h264, h264_config()), frame(t3, true, 5 << 20)]).await, (Code::Ok, 1));
        // A client that disconnects mid-stream: what it sent is sealed, nothing else is touched.
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let t4 = T0 + 14_400_000_000;
        let mut c = client();
        let call = tokio::spawn(async move { c.publish(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map(|r| r.into_inner()) });
        tx.send(open("cam-1", h264, h264_config())).await.expect("send");
        for n in 0..10 {
            tx.send(frame(t4 + n * 40_000, n == 0, 800)).await.expect("send");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        call.abort();
        drop(tx);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // An export asking for a digest the server does not offer is refused, naming it.
        let op_bearer: MetadataValue<_> = format!("Bearer {op}").parse().expect("header");
        let mut export = proto::export_client::ExportClient::with_interceptor(ch.clone(), move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", op_bearer.clone());
            Ok(r)
        });
        // A minute of cam-1 from `from_us`, for `purpose`, with the manifest digest `digest`.
        let export_request = |from_us: i64, purpose: &str, digest: &str| proto::ExportRequest {
            camera: "cam-1".into(),
            from_us,
            to_us: from_us + 60_000_000,
            access: Some(proto::Access { purpose: purpose.into(), ..Default::default() }),
            digest: digest.into(),
        };
        // A read without a purpose is refused by the server itself, whatever the client.
        let refused = export.export_clip(export_request(T0, " ", "")).await.expect_err("no purpose");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("purpose"), "{refused:?}");
        let req = export_request(T0, "check", "md5");
        let refused = export.export_clip(req.clone()).await.expect_err("an unknown digest is refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("md5"), "{refused:?}");
        // The same request with a digest it offers goes through (the refusal was the digest's).
        let mut stream = export.export_clip(proto::ExportRequest { digest: "sha256".into(), ..req }).await.expect("export").into_inner();
        let mut manifest = None;
        while let Some(chunk) = stream.message().await.expect("chunk") {
            if let Some(proto::export_chunk::Part::Manifest(m)) = chunk.part {
                manifest = Some(m.json);
            }
        }
        assert!(manifest.expect("manifest").contains("\"digest_algorithm\":\"sha256\""));
        // A client that abandons an export after its first message: the read is audited all
        // the same. 40 MiB of video is far more than the server's queues and the connection's
        // windows hold, so the export cannot have finished behind the client's back.
        let t5 = T0 + 18_000_000_000;
        let big: Vec<_> =
            std::iter::once(open("cam-1", h264, h264_config())).chain((0..8).map(|n| frame(t5 + n * 40_000, n == 0, 5 << 20))).collect();
        assert_eq!(publish(client(), big).await, (Code::Ok, 8));
        let mut stream = export.export_clip(export_request(t5, "abandoned export", "")).await.expect("export").into_inner();
        assert!(stream.message().await.expect("first chunk").is_some());
        drop(stream);
    });
    let auditor = cli(&addr, &admin, &["token", "create", "--name", "aud", "--unit", "inspectorate", "--roles", "auditor"]);
    let exports = cli(&addr, &auditor, &["audit", "query", "--action", "video.export"]);
    let abandoned: Vec<serde_json::Value> = exports
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|e| e["purpose"] == "abandoned export")
        .collect();
    assert_eq!(abandoned.len(), 1, "{exports}");
    assert_eq!(abandoned[0]["action"], "video.export", "no manifest for an export that did not finish: {exports}");
    // Everything accepted is there; the server still serves: 50 + 2 (out-of-order stream) +
    // 1 (5 MiB frame) + the 10 of the vanished client (sealed when its stream ended).
    let count = |from: &str, to: &str| -> u64 {
        let out = cli(&addr, &op, &["play", "--camera", "cam-1", "--from", from, "--to", to, "--purpose", "check"]);
        out.split_whitespace().next().and_then(|n| n.parse().ok()).expect("count")
    };
    assert_eq!(count("2026-11-23T10:00:00Z", "2026-11-23T10:01:00Z"), 50);
    assert_eq!(count("2026-11-23T11:00:00Z", "2026-11-23T11:01:00Z"), 2);
    assert_eq!(count("2026-11-23T13:00:00Z", "2026-11-23T13:01:00Z"), 1);
    assert_eq!(count("2026-11-23T14:00:00Z", "2026-11-23T14:01:00Z"), 10);
}
