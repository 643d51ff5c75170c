//! The ingest and read contract over gRPC with the real server (DURABILITY.md "The publisher's
//! contract"): capture times checked against the server's clock, a refused publisher told
//! what is durable and able to resume, validation at the door, bad protobuf, revoked tokens.

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

struct Server {
    child: Child,
    addr: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port");
    let data = dir.path().join("data");
    let mut child = Command::new(BIN)
        .args(["serve", "--data", data.to_str().expect("utf8"), "--listen", &format!("127.0.0.1:{port}"), "--metrics", ""])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("server");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line).expect("token");
    let admin = line.split_whitespace().find(|w| w.starts_with("cvt_")).expect("admin token").to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { child, addr: format!("http://127.0.0.1:{port}"), admin, _dir: dir }
}

fn cli(s: &Server, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env("CAMVAULT_SERVER", &s.addr).env("CAMVAULT_TOKEN", token).output().expect("cli")
}

fn ok(s: &Server, token: &str, args: &[&str]) -> String {
    let out = cli(s, token, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A camera `cam-1` of unit-1, and tokens: ingest (cam-1), operator, auditor.
fn setup(s: &Server) -> (String, String, String) {
    ok(s, &s.admin, &["camera", "put", "--id", "cam-1", "--unit", "unit-1"]);
    let token = |args: &[&str]| ok(s, &s.admin, &[&["token", "create", "--unit", "unit-1"][..], args].concat());
    (
        token(&["--name", "edge", "--roles", "ingest", "--cameras", "cam-1"]),
        token(&["--name", "op", "--roles", "operator"]),
        token(&["--name", "aud", "--roles", "auditor"]),
    )
}

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// H.264 parameter sets of a 320x240 stream (from x264).
fn h264_config() -> Vec<u8> {
    let sps = [
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0x20, 0xf1,
        0x42, 0x99, 0x60,
    ];
    [&[0, 0, 0, 1][..], &sps, &[0, 0, 0, 1, 0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0]].concat()
}

fn open(backfill: bool) -> proto::PublishRequest {
    open_with("cam-1", h264_config(), backfill)
}

fn open_with(camera: &str, config: Vec<u8>, backfill: bool) -> proto::PublishRequest {
    let codec = Some(proto::CodecConfig { codec: proto::Codec::H264 as i32, config });
    proto::PublishRequest { msg: Some(Msg::Open(proto::OpenStream { camera: camera.into(), codec, backfill })) }
}

/// Frame `n` of a stream starting at `t0`: Annex B, an IDR every 25.
fn frame(t0: i64, n: i64) -> proto::PublishRequest {
    let payload = vec![0, 0, 0, 1, if n % 25 == 0 { 0x65 } else { 0x41 }, 0x88, n as u8, 0x5a, 0x5a];
    proto::PublishRequest {
        msg: Some(Msg::Frame(proto::Frame { ts_us: t0 + n * 40_000, pts_90k: Some(n * 3600), key: n % 25 == 0, payload: payload.into() })),
    }
}

fn with_payload(t0: i64, n: i64, payload: Vec<u8>) -> proto::PublishRequest {
    proto::PublishRequest {
        msg: Some(Msg::Frame(proto::Frame { ts_us: t0 + n * 40_000, pts_90k: None, key: true, payload: payload.into() })),
    }
}

/// What a publish call ended with: its status (Ok for a clean end), its message, the last
/// acknowledgement's durable_seq, and the durable sequence number in the error's metadata.
struct Ended {
    code: Code,
    message: String,
    durable: u64,
    durable_in_status: Option<u64>,
}

async fn publish(s: &Server, token: &str, msgs: Vec<proto::PublishRequest>) -> Ended {
    let ch = tonic::transport::Channel::from_shared(s.addr.clone()).expect("uri").connect().await.expect("connect");
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse().expect("header");
    let mut c = proto::ingest_client::IngestClient::with_interceptor(ch, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", bearer.clone());
        Ok(r)
    });
    let mut acks = match c.publish(tokio_stream::iter(msgs)).await {
        Ok(r) => r.into_inner(),
        Err(e) => return Ended { code: e.code(), message: e.message().into(), durable: 0, durable_in_status: None },
    };
    let mut durable = 0;
    loop {
        match acks.message().await {
            Ok(Some(a)) => durable = a.durable_seq,
            Ok(None) => return Ended { code: Code::Ok, message: String::new(), durable, durable_in_status: None },
            Err(e) => {
                let in_status = e.metadata().get("camvault-durable-seq").and_then(|v| v.to_str().ok()?.parse().ok());
                return Ended { code: e.code(), message: e.message().into(), durable, durable_in_status: in_status };
            }
        }
    }
}

fn frames_stored(s: &Server, op: &str, from_us: i64, to_us: i64) -> u64 {
    let t = |us: i64| jiff::Timestamp::from_microsecond(us).expect("time").to_string();
    let out = ok(s, op, &["play", "--camera", "cam-1", "--from", &t(from_us), "--to", &t(to_us), "--purpose", "check"]);
    out.split_whitespace().next().and_then(|n| n.parse().ok()).expect("count")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Finding 1: a camera with an unsynced clock (1970), a wrapped counter, a clock in 2200:
/// refused with the bound named, nothing stored to be erased by the next sweep.
#[test]
fn a_camera_with_an_unsynced_clock_is_refused_naming_the_bound() {
    let s = start();
    let (ingest, op, _) = setup(&s);
    runtime().block_on(async {
        for ts_us in [i64::MIN, -10_000_000, 0, 7_258_118_400_000_000, i64::MAX] {
            for backfill in [false, true] {
                let e = publish(&s, &ingest, vec![open(backfill), with_payload(ts_us, 0, vec![0, 0, 0, 1, 0x65, 1])]).await;
                assert_eq!(e.code, Code::InvalidArgument, "{ts_us}: {}", e.message);
                assert!(e.message.contains("2000-01-01") || e.message.contains("ahead of the store's clock"), "{}", e.message);
            }
        }
        // A live stream ten minutes behind: refused, pointing at a backfill.
        let behind = now_us() - 600_000_000;
        let e = publish(&s, &ingest, vec![open(false), frame(behind, 0)]).await;
        assert!(e.code == Code::InvalidArgument && e.message.contains("backfill"), "{}", e.message);
        // The same frames as a backfill are taken.
        let e = publish(
            &s,
            &ingest,
            (0..25).map(|n| frame(behind, n)).fold(vec![open(true)], |mut v, f| {
                v.push(f);
                v
            }),
        )
        .await;
        assert_eq!((e.code, e.durable), (Code::Ok, 25), "{}", e.message);
        assert_eq!(frames_stored(&s, &op, behind, behind + 60_000_000), 25);
    });
    // Nothing of the refused calls is stored: the camera shows the backfill only.
    let listed = ok(&s, &op, &["recordings", "--camera", "cam-1", "--from", "2000-01-01T00:00:00Z", "--to", "+1h"]);
    assert_eq!(listed.lines().filter(|l| l.starts_with("recorded")).count(), 1, "{listed}");
}

/// Finding 2: open, five good frames, a frame repeating the fifth's time. The call says what
/// is durable before it ends, in its last acknowledgement and in the error; the publisher
/// resumes from there on a new call, re-sending what it had not seen acknowledged, and
/// nothing is refused, lost or doubled.
#[test]
fn a_refused_publisher_hears_what_is_durable_and_resumes() {
    let s = start();
    let (ingest, op, _) = setup(&s);
    let t0 = now_us();
    runtime().block_on(async {
        let mut msgs = vec![open(false)];
        msgs.extend((0..5).map(|n| frame(t0, n)));
        msgs.push(frame(t0, 4));
        let e = publish(&s, &ingest, msgs).await;
        assert_eq!(e.code, Code::InvalidArgument, "{}", e.message);
        assert_eq!((e.durable, e.durable_in_status), (5, Some(5)), "the five good frames are durable, and the call says so");
        // The publisher re-sends all five (it may not have seen the acknowledgement) and goes on.
        let mut msgs = vec![open(false)];
        msgs.extend((0..10).map(|n| frame(t0, n)));
        let e = publish(&s, &ingest, msgs).await;
        assert_eq!((e.code, e.durable), (Code::Ok, 10), "{}", e.message);
        // Different bytes at a stored time are refused.
        let e = publish(&s, &ingest, vec![open(false), with_payload(t0, 3, vec![0, 0, 0, 1, 0x65, 0xee])]).await;
        assert_eq!(e.code, Code::AlreadyExists, "{}", e.message);
    });
    assert_eq!(frames_stored(&s, &op, t0, t0 + 60_000_000), 10, "nothing lost, nothing doubled");
}

/// Findings 4 and 5: garbage parameter sets and payloads that are not Annex B are refused at
/// the door; camera ids the store would refuse, and holds and retention settings on cameras
/// nobody registered, are refused by the API.
#[test]
fn garbage_and_unknown_names_are_refused_at_the_door() {
    let s = start();
    let (ingest, op, _) = setup(&s);
    let t0 = now_us();
    runtime().block_on(async {
        let junk_sps = [&[0, 0, 0, 1, 0x67][..], &[0x13, 0x77, 0xa1, 0xff, 0x02, 0x40], &[0, 0, 0, 1, 0x68, 0x01]].concat();
        let e = publish(&s, &ingest, vec![open_with("cam-1", junk_sps, false)]).await;
        assert_eq!(e.code, Code::InvalidArgument, "{}", e.message);
        // A length-prefixed (MP4-style) access unit.
        let e = publish(&s, &ingest, vec![open(false), with_payload(t0, 0, vec![0, 0, 0, 5, 0x65, 1, 2, 3, 4])]).await;
        assert!(e.code == Code::InvalidArgument && e.message.contains("length-prefixed"), "{}", e.message);
        // Annex B without a slice (only a parameter set).
        let e = publish(&s, &ingest, vec![open(false), with_payload(t0, 0, vec![0, 0, 0, 1, 0x68, 1])]).await;
        assert!(e.code == Code::InvalidArgument && e.message.contains("slice"), "{}", e.message);
    });
    assert_eq!(frames_stored(&s, &op, t0 - 1_000_000, t0 + 60_000_000), 0, "nothing of it was stored");
    for bad in ["a/b", "..", &"x".repeat(300), ".hidden", "sp ace"] {
        let out = cli(&s, &s.admin, &["camera", "put", "--id", bad, "--unit", "unit-1"]);
        assert!(!out.status.success(), "camera id {bad:?} was registered");
    }
    // A NUL byte cannot travel on a command line: straight over gRPC.
    runtime().block_on(async {
        let ch = tonic::transport::Channel::from_shared(s.addr.clone()).expect("uri").connect().await.expect("connect");
        let bearer: MetadataValue<_> = format!("Bearer {}", s.admin).parse().expect("header");
        let mut c = proto::catalog_client::CatalogClient::with_interceptor(ch, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        });
        let camera = proto::Camera { id: "nul\0byte".into(), owning_unit: "unit-1".into(), ..Default::default() };
        let e = c.put_camera(proto::PutCameraRequest { camera: Some(camera) }).await.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    });
    let listed = ok(&s, &s.admin, &["camera", "list"]);
    assert_eq!(listed.lines().count(), 1, "only cam-1: {listed}");
    let hold =
        cli(&s, &s.admin, &["hold", "place", "--case", "C-1", "--cameras", "cam-typo", "--from", "-1h", "--to", "now", "--reason", "r"]);
    assert!(
        !hold.status.success() && String::from_utf8_lossy(&hold.stderr).contains("cam-typo"),
        "{}",
        String::from_utf8_lossy(&hold.stderr)
    );
    let ret = cli(&s, &s.admin, &["retention", "set", "--camera", "cam-typo", "--days", "60", "--reason", "r"]);
    assert!(!ret.status.success() && String::from_utf8_lossy(&ret.stderr).contains("NotFound"), "{}", String::from_utf8_lossy(&ret.stderr));
    let ret = cli(&s, &s.admin, &["retention", "get", "--camera", "cam-typo"]);
    assert!(!ret.status.success() && String::from_utf8_lossy(&ret.stderr).contains("NotFound"), "{}", String::from_utf8_lossy(&ret.stderr));
}

/// Raw bytes as a gRPC message, both ways.
#[derive(Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Finding 6: a unary call whose body is not valid protobuf is the caller's error.
#[test]
fn a_unary_call_whose_body_is_not_protobuf_is_invalid_argument() {
    let s = start();
    runtime().block_on(async {
        let ch = tonic::transport::Channel::from_shared(s.addr.clone()).expect("uri").connect().await.expect("connect");
        let mut grpc = tonic::client::Grpc::new(ch);
        for path in ["/camvault.v1.Catalog/ListCameras", "/camvault.v1.Holds/PlaceHold", "/camvault.v1.Audit/Query"] {
            grpc.ready().await.expect("ready");
            let mut req = tonic::Request::new(vec![0xff, 0xff, 0xff, 0xff, 0x0f]);
            req.metadata_mut().insert("authorization", format!("Bearer {}", s.admin).parse().expect("header"));
            let e = grpc
                .unary::<_, Vec<u8>, _>(req, tonic::codegen::http::uri::PathAndQuery::from_static(path), RawCodec)
                .await
                .expect_err("not protobuf");
            assert_eq!(e.code(), Code::InvalidArgument, "{path}: {e:?}");
        }
    });
}

/// Finding 7: revoking a token ends the calls it opened (a live follow, a publisher) within a
/// second, whatever their own deadlines.
#[test]
fn revoking_a_token_ends_its_open_calls_within_a_second() {
    let s = start();
    let (ingest, op, _) = setup(&s);
    let t0 = now_us();
    let list = ok(&s, &s.admin, &["token", "list"]);
    let id_of = |name: &str| -> String {
        let line = list.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("no token {name}: {list}"));
        line.split_whitespace().next().expect("id").to_string()
    };
    let (op_id, ingest_id) = (id_of("op"), id_of("edge"));
    runtime().block_on(async {
        let ch = tonic::transport::Channel::from_shared(s.addr.clone()).expect("uri").connect().await.expect("connect");
        // A publisher that stays open, and a live follow of its camera.
        let bearer: MetadataValue<_> = format!("Bearer {ingest}").parse().expect("header");
        let mut ic = proto::ingest_client::IngestClient::with_interceptor(ch.clone(), move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        });
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tx.send(open(false)).await.expect("send");
        tx.send(frame(t0, 0)).await.expect("send");
        let mut acks = ic.publish(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("publish").into_inner();
        let first = acks.message().await.expect("ack").expect("an acknowledgement");
        assert!(first.accepted_seq >= 1);
        let bearer: MetadataValue<_> = format!("Bearer {op}").parse().expect("header");
        let mut pc = proto::playback_client::PlaybackClient::with_interceptor(ch.clone(), move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        });
        let access = proto::Access { purpose: "live watch".into(), ..Default::default() };
        let req = proto::ReadFramesRequest { camera: "cam-1".into(), from_us: t0, to_us: 0, follow: true, access: Some(access) };
        let mut follow = pc.read_frames(req).await.expect("follow").into_inner();
        while let Some(item) = follow.message().await.expect("item") {
            if matches!(item.item, Some(proto::read_item::Item::Frame(_))) {
                break;
            }
        }
        for id in [&op_id, &ingest_id] {
            ok(&s, &s.admin, &["token", "revoke", "--id", id]);
        }
        let follow_ended = tokio::time::timeout(Duration::from_secs(1), end_of(&mut follow)).await;
        assert_eq!(follow_ended.expect("the follow ended within a second of the revocation"), Some(Code::Unauthenticated));
        let publish_ended = tokio::time::timeout(Duration::from_secs(1), end_of(&mut acks)).await;
        assert_eq!(publish_ended.expect("the publisher's call ended within a second of the revocation"), Some(Code::Unauthenticated));
        drop(tx);
    });
}

/// Reads a call's stream to its end: the status it ended with, or `None` for a clean end.
async fn end_of<T>(stream: &mut tonic::Streaming<T>) -> Option<Code> {
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return None,
            Err(e) => return Some(e.code()),
        }
    }
}
