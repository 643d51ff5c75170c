//! Fuzz targets over what the server and the command decode from outside (DESIGN.md
//! "Fuzzing"): MP4 files given to `camvault ingest`, H.264/H.265 parameter sets and access
//! units from publishers, the gRPC framing of a publish call, times typed on the command line
//! and the configuration file. The store's own files are `storage_core::fuzz`'s targets; every
//! target of both is in [`TARGETS`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
pub use storage_core::fuzz::{seed, StoreFile};
use storage_core::Codec;
use tokio_stream::Stream;
use tonic::Status;

use storage_core::fuzz::store_file;

use crate::{config, h26x, ingest, mp4_in, time};

/// A fuzz target: arbitrary bytes in, errors allowed, panics and unbounded work not.
pub type Target = fn(&[u8]);

/// Every target by name: the names of `fuzz/fuzz_targets/*.rs` and `fuzz/corpus/*/`.
pub const TARGETS: [(&str, Target); 17] = [
    ("sealed_segment", |d| store_file(StoreFile::SealedSegment, d)),
    ("open_segment", |d| store_file(StoreFile::OpenSegment, d)),
    ("sidecar", |d| store_file(StoreFile::Sidecar, d)),
    ("catalog", |d| store_file(StoreFile::Catalog, d)),
    ("control_log", |d| store_file(StoreFile::Control, d)),
    ("audit_log", |d| store_file(StoreFile::Audit, d)),
    ("audit_anchor", |d| store_file(StoreFile::AuditAnchor, d)),
    ("key_store", |d| store_file(StoreFile::KeyStore, d)),
    ("kek_file", |d| store_file(StoreFile::Kek, d)),
    ("signing_key", |d| store_file(StoreFile::SigningKey, d)),
    ("store_id", |d| store_file(StoreFile::StoreId, d)),
    ("decommission_marker", |d| store_file(StoreFile::DecommissionMarker, d)),
    ("mp4_demux", mp4_demux),
    ("parameter_sets", parameter_sets),
    ("publish_framing", publish_framing),
    ("cli_time", cli_time),
    ("config_file", config_file),
];

/// `camvault ingest FILE.mp4`: the demuxer, then each sample as the server would take it.
pub fn mp4_demux(data: &[u8]) {
    if let Ok(track) = mp4_in::read(data) {
        let _ = h26x::sample_description(track.codec, &track.config);
        for s in track.samples.iter().take(64) {
            let _ = h26x::nals(&s.data);
        }
    }
}

/// Parameter sets and access units: the first byte picks the codec, the rest is both the
/// codec configuration and an Annex B stream.
pub fn parameter_sets(data: &[u8]) {
    let Some((&c, rest)) = data.split_first() else { return };
    let codec = if c & 1 == 0 { Codec::H264 } else { Codec::H265 };
    let _ = h26x::sample_description(codec, rest);
    let _ = h26x::check_access_unit(codec, rest);
    let (aus, config) = h26x::access_units(codec, rest);
    let _ = h26x::sample_description(codec, &config);
    let _ = h26x::presentation_order(codec, &config, &aus);
    let _ = h26x::presentation_order(codec, rest, &aus);
    let mut out = Vec::new();
    for au in &aus {
        out.clear();
        h26x::to_length_prefixed(codec, &au.data, &mut out);
    }
}

/// A request body whose DATA frames are given.
struct Frames(VecDeque<Bytes>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Status;
    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Largest message the framing target allows (the server's limit is larger; the framing's
/// logic is the same at any limit, and a small one reaches the refusal path).
const FUZZ_MESSAGE_BYTES_MAX: usize = 64 << 10;

/// A publish call's body: the first byte cuts the rest into DATA frames of that many bytes
/// (at least one), which are decoded into messages as the server does.
pub fn publish_framing(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else { return };
    let bytes = Bytes::copy_from_slice(rest);
    let step = usize::from(cut).max(1);
    let frames = (0..bytes.len()).step_by(step).map(|at| bytes.slice(at..(at + step).min(bytes.len()))).collect();
    let mut messages = ingest::PublishMessages::new(Frames(frames), FUZZ_MESSAGE_BYTES_MAX);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    // Every poll is ready (the body never waits): the loop ends when the messages do, and a
    // message takes at least its 5-byte prefix, so it runs at most len / 5 + 1 times.
    for _ in 0..=rest.len() / 5 + 1 {
        match Pin::new(&mut messages).poll_next(&mut cx) {
            Poll::Ready(Some(_)) => {}
            Poll::Ready(None) => return,
            Poll::Pending => panic!("a body that is always ready left the decoder pending"),
        }
    }
    panic!("the publish framing produced more messages than its input holds");
}

/// Times and durations as an operator types them.
pub fn cli_time(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(t) = s.parse::<time::TimeArg>() {
        let _ = time::format_rfc3339(t.resolve(crate::now_us()));
    }
    let _ = time::parse_duration_us(s);
    if let Ok(us) = time::parse_rfc3339(s) {
        let _ = time::format_rfc3339(us);
    }
}

/// `camvault.toml`: parsed and checked, never opening what it names.
pub fn config_file(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(c) = config::parse(s) {
        let _ = config::store_config(&c);
    }
}

/// Runs the target called `name` on `data` (the `fuzz/` crate's entry point).
///
/// # Panics
/// On a name not in [`TARGETS`]: a fuzz binary built for a target that does not exist.
pub fn run(name: &str, data: &[u8]) {
    match TARGETS.iter().find(|(n, _)| *n == name) {
        Some((_, target)) => target(data),
        None => panic!("no fuzz target {name:?}"),
    }
}
