//! The ingest service, with its publish calls' messages decoded straight out of HTTP/2's
//! DATA frames.
//!
//! tonic's generated service reads a call's request through `Streaming`, which copies every
//! DATA frame into one buffer per call and decodes each message out of that buffer; the buffer
//! is re-allocated whenever a decoded payload still holds its front. At 1,000 publishing
//! streams that buffering was 9% of the server's samples, and its re-allocations 12% at 2,000
//! (BENCHMARKS.md). HTTP/2 already hands each DATA frame over as a slice of its own read
//! buffer, and a publish message (one video frame) nearly always arrives whole inside one: a
//! message decoded from that slice brings its frame's payload to the engine with no copy on
//! the way. A message split across DATA frames is assembled in a buffer of its own, which
//! holds that message alone.
//!
//! Everything else about the call is as the generated service does it: the same path, the
//! same handler ([`Api::publish_messages`]), the same status codes for a compressed or
//! oversized message, and tonic's encoder for the responses and the final status.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use tokio_stream::Stream;
use tonic::body::Body;
use tonic::codec::{Codec, EncodeBody, SingleMessageCompressionOverride};
use tonic::codegen::http;
use tonic::codegen::{Body as HttpBody, Service};
use tonic::server::NamedService;
use tonic::Status;

use crate::proto;
use crate::server::{Api, MESSAGE_BYTES_MAX};

/// The one method of `camvault.v1.Ingest`.
const PUBLISH_PATH: &str = "/camvault.v1.Ingest/Publish";

/// gRPC's message prefix: a compression flag (1 byte) and the message length (u32 BE).
const MESSAGE_PREFIX_BYTES: usize = 5;

/// Most of a stated message length reserved at once for a message cut across DATA frames: one
/// allocation for any camera frame up to a 4K I-frame, while a client that states 16 MiB and
/// sends little holds little (beyond this the buffer grows with what arrives).
const SPLIT_RESERVE_BYTES_MAX: usize = 2 << 20;

/// `camvault.v1.Ingest` as a service of the server's router.
#[derive(Clone)]
pub struct IngestService {
    api: Api,
}

impl IngestService {
    /// The ingest service over `api`.
    pub fn new(api: Api) -> Self {
        IngestService { api }
    }
}

impl NamedService for IngestService {
    const NAME: &'static str = "camvault.v1.Ingest";
}

impl Service<http::Request<Body>> for IngestService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let api = self.api.clone();
        Box::pin(async move {
            if req.uri().path() != PUBLISH_PATH {
                return Ok(Status::unimplemented(format!("no method {} in camvault.v1.Ingest", req.uri().path())).into_http());
            }
            Ok(publish(api, req).await.unwrap_or_else(Status::into_http))
        })
    }
}

/// One publish call: the handler over the call's decoded messages, its responses encoded by
/// tonic.
async fn publish(api: Api, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
    // The server offers no request compression, as the generated service would not.
    if let Some(encoding) = req.headers().get("grpc-encoding").filter(|e| e.as_bytes() != b"identity") {
        return Err(Status::unimplemented(format!("publish messages compressed with {encoding:?}: the server takes them uncompressed")));
    }
    let req = tonic::Request::from_http(req.map(|body| PublishMessages::new(body, MESSAGE_BYTES_MAX)));
    let (metadata, responses, _) = api.publish_messages(req).await?.into_parts();
    let encoder = tonic_prost::ProstCodec::<proto::PublishResponse, proto::PublishRequest>::default().encoder();
    let body = EncodeBody::new_server(encoder, responses, None, SingleMessageCompressionOverride::default(), Some(MESSAGE_BYTES_MAX));
    let mut response = http::Response::new(Body::new(body));
    *response.headers_mut() = metadata.into_headers();
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    Ok(response)
}

/// A publish call's request messages, decoded from the request body's DATA frames.
pub struct PublishMessages<B> {
    body: B,
    /// The rest of the current DATA frame.
    frame: Bytes,
    /// A message that continues past the DATA frame it started in, prefix included.
    split: BytesMut,
    message_bytes_max: usize,
    ended: bool,
}

impl<B> PublishMessages<B> {
    /// Messages of `body`, each at most `message_bytes_max` bytes.
    pub fn new(body: B, message_bytes_max: usize) -> Self {
        PublishMessages { body, frame: Bytes::new(), split: BytesMut::new(), message_bytes_max, ended: false }
    }

    /// The next whole message's bytes, or `None` once the current DATA frame is used up.
    fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.split.is_empty() && self.frame.len() >= MESSAGE_PREFIX_BYTES {
            let total = MESSAGE_PREFIX_BYTES + self.message_len(&self.frame)?;
            if self.frame.len() >= total {
                let mut message = self.frame.split_to(total);
                message.advance(MESSAGE_PREFIX_BYTES);
                return Ok(Some(message));
            }
        }
        // The message goes on in a later DATA frame: assemble it, taking from this frame only
        // what belongs to it (the prefix first, as it says how long the message is).
        self.take_into_split(MESSAGE_PREFIX_BYTES);
        if self.split.len() < MESSAGE_PREFIX_BYTES {
            return Ok(None);
        }
        let total = MESSAGE_PREFIX_BYTES + self.message_len(&self.split)?;
        self.split.reserve((total - self.split.len()).min(SPLIT_RESERVE_BYTES_MAX));
        self.take_into_split(total);
        if self.split.len() < total {
            return Ok(None);
        }
        let mut message = std::mem::take(&mut self.split).freeze();
        message.advance(MESSAGE_PREFIX_BYTES);
        Ok(Some(message))
    }

    /// Moves bytes of the current DATA frame into `split` until it holds `total` bytes.
    fn take_into_split(&mut self, total: usize) {
        let n = total.saturating_sub(self.split.len()).min(self.frame.len());
        self.split.extend_from_slice(&self.frame[..n]);
        self.frame.advance(n);
    }

    /// The length a message prefix states, checked before any of the message is buffered.
    fn message_len(&self, prefix: &[u8]) -> Result<usize, Status> {
        match prefix[0] {
            0 => {}
            1 => return Err(Status::internal("a compressed publish message on a call that declared no compression")),
            flag => return Err(Status::internal(format!("invalid gRPC compression flag {flag}"))),
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.message_bytes_max {
            return Err(Status::out_of_range(format!("a publish message of {len} bytes; the limit is {} bytes", self.message_bytes_max)));
        }
        Ok(len)
    }
}

impl<B> Stream for PublishMessages<B>
where
    B: HttpBody<Data = Bytes, Error = Status> + Unpin,
{
    type Item = Result<proto::PublishRequest, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match this.next_message() {
                Ok(Some(message)) => {
                    let decoded = proto::PublishRequest::decode(message)
                        .map_err(|e| Status::invalid_argument(format!("malformed publish message: {e}")));
                    this.ended = decoded.is_err();
                    return Poll::Ready(Some(decoded));
                }
                Ok(None) => {}
                Err(e) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            // The DATA frame is used up: the next one.
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers carry nothing a publish call reads.
                    if let Ok(data) = frame.into_data() {
                        this.frame = data;
                    }
                }
                Some(Err(status)) => {
                    this.ended = true;
                    // The client went away: the stream ends, and what it sent is kept.
                    if status.code() == tonic::Code::Cancelled {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(status)));
                }
                None => {
                    this.ended = true;
                    if !this.split.is_empty() || !this.frame.is_empty() {
                        return Poll::Ready(Some(Err(Status::invalid_argument("the publish stream ended inside a message"))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use tokio_stream::StreamExt;

    /// A request body that hands out the given DATA frames, then ends.
    struct Frames(VecDeque<Result<Bytes, Status>>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = Status;
        fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|r| r.map(http_body::Frame::data)))
        }
    }

    fn frame_message(seq: i64, payload_bytes: usize) -> proto::PublishRequest {
        let payload: Vec<u8> = (0..payload_bytes).map(|i| (i as i64 * 7 + seq) as u8).collect();
        proto::PublishRequest {
            msg: Some(proto::publish_request::Msg::Frame(proto::Frame {
                ts_us: seq * 40_000,
                pts_90k: Some(seq * 3600),
                key: seq % 25 == 0,
                payload: payload.into(),
            })),
        }
    }

    /// The gRPC framing of `messages`, back to back.
    fn wire(messages: &[proto::PublishRequest]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            out.push(0);
            out.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
            m.encode(&mut out).expect("encode");
        }
        out
    }

    async fn decode_all(frames: Vec<Bytes>, max: usize) -> Vec<Result<proto::PublishRequest, Status>> {
        let body = Frames(frames.into_iter().map(Ok).collect());
        PublishMessages::new(body, max).collect().await
    }

    fn messages() -> Vec<proto::PublishRequest> {
        vec![frame_message(0, 70_000), frame_message(1, 3), frame_message(2, 0), frame_message(3, 9_000), frame_message(4, 1)]
    }

    /// However the bytes are cut into DATA frames (every cut point, down to one byte per
    /// frame), the same messages come out, in order.
    #[tokio::test]
    async fn messages_survive_any_cut_into_data_frames() {
        let sent = messages();
        let bytes = Bytes::from(wire(&sent));
        for frame_bytes in [bytes.len(), 70_005, 70_006, 65_536, 4_096, 7, 5, 1] {
            let frames: Vec<Bytes> =
                (0..bytes.len()).step_by(frame_bytes).map(|at| bytes.slice(at..(at + frame_bytes).min(bytes.len()))).collect();
            let got: Vec<_> = decode_all(frames, MESSAGE_BYTES_MAX).await.into_iter().map(|r| r.expect("message")).collect();
            assert_eq!(got, sent, "DATA frames of {frame_bytes} bytes");
        }
        // Frames of uneven sizes, with an empty one among them.
        let cuts = [0, 3, 5, 6, 70_004, 70_010, 70_010, 70_100, bytes.len()];
        let frames: Vec<Bytes> = cuts.windows(2).map(|w| bytes.slice(w[0]..w[1])).collect();
        let got: Vec<_> = decode_all(frames, MESSAGE_BYTES_MAX).await.into_iter().map(|r| r.expect("message")).collect();
        assert_eq!(got, sent);
    }

    /// A message that arrives whole in one DATA frame is not copied: its payload is a slice of
    /// the frame's bytes.
    #[tokio::test]
    async fn a_whole_message_payload_is_a_slice_of_its_data_frame() {
        let bytes = Bytes::from(wire(&messages()));
        let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        let got = decode_all(vec![bytes.clone()], MESSAGE_BYTES_MAX).await;
        let Some(Ok(proto::PublishRequest { msg: Some(proto::publish_request::Msg::Frame(f)) })) = got.first() else {
            panic!("no first frame: {got:?}");
        };
        assert!(range.contains(&(f.payload.as_ptr() as usize)), "the payload was copied out of the DATA frame");
    }

    /// A prefix stating more than the limit is refused before anything is buffered; the
    /// messages before it come out first.
    #[tokio::test]
    async fn an_oversized_message_is_refused_after_the_ones_before_it() {
        let sent = messages();
        let mut bytes = wire(&sent[..2]);
        bytes.extend_from_slice(&[0, 0, 0x01, 0x86, 0xa1]); // 100,001 bytes stated
        let got = decode_all(vec![Bytes::from(bytes)], 100_000).await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].as_ref().expect("first"), &sent[0]);
        assert_eq!(got[1].as_ref().expect("second"), &sent[1]);
        let e = got[2].as_ref().expect_err("oversized");
        assert_eq!(e.code(), tonic::Code::OutOfRange);
        assert!(e.message().contains("100001"), "{}", e.message());
    }

    /// A message cut across DATA frames that states 10 MiB holds about what has arrived plus
    /// the bounded reserve, not the 10 MiB it states.
    #[test]
    fn a_stated_length_is_not_reserved_beyond_the_bound() {
        let mut m = PublishMessages::new(Frames(VecDeque::new()), MESSAGE_BYTES_MAX);
        let mut bytes = vec![0, 0x00, 0xa0, 0x00, 0x00]; // 10 MiB stated
        bytes.extend_from_slice(&[0u8; 100]);
        m.frame = Bytes::from(bytes);
        assert!(m.next_message().expect("a legal length").is_none());
        assert_eq!(m.split.len(), 105);
        assert!(m.split.capacity() < SPLIT_RESERVE_BYTES_MAX + 1024, "reserved {} bytes", m.split.capacity());
    }

    /// A stream cut inside a message, a compressed or unknown flag, and bytes that are not a
    /// message each end the stream with an error after what came whole before them.
    #[tokio::test]
    async fn bad_framing_ends_the_stream_with_an_error() {
        let sent = messages();
        let whole = wire(&sent[..1]);
        let cases: [(&[u8], tonic::Code); 4] = [
            (&[0, 0, 0, 0, 9, 1, 2], tonic::Code::InvalidArgument),       // ends 7 bytes short
            (&[1, 0, 0, 0, 1, 0], tonic::Code::Internal),                 // compressed
            (&[7, 0, 0, 0, 1, 0], tonic::Code::Internal),                 // no such flag
            (&[0, 0, 0, 0, 2, 0xff, 0xff], tonic::Code::InvalidArgument), // not protobuf
        ];
        for (tail, code) in cases {
            let mut bytes = whole.clone();
            bytes.extend_from_slice(tail);
            let got = decode_all(vec![Bytes::from(bytes)], MESSAGE_BYTES_MAX).await;
            assert_eq!(got.len(), 2, "{tail:?}: {got:?}");
            assert_eq!(got[0].as_ref().expect("first"), &sent[0]);
            assert_eq!(got[1].as_ref().expect_err("bad tail").code(), code, "{tail:?}");
        }
    }

    /// A cancelled call (the client went away) ends the stream without an error; another
    /// body error is passed on.
    #[tokio::test]
    async fn a_cancelled_body_ends_the_stream_and_other_errors_pass_on() {
        let sent = messages();
        for (error, passed_on) in [(Status::cancelled("gone"), false), (Status::unavailable("reset"), true)] {
            let body = Frames(VecDeque::from([Ok(Bytes::from(wire(&sent[..1]))), Err(error)]));
            let got: Vec<_> = PublishMessages::new(body, MESSAGE_BYTES_MAX).collect().await;
            assert_eq!(got.len(), 1 + usize::from(passed_on), "{got:?}");
            assert_eq!(got[0].as_ref().expect("first"), &sent[0]);
        }
    }
}
