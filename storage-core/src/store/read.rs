//! Reading frames back by camera and time range.

use std::sync::Arc;

use bytes::Bytes;

use crate::keys::SegmentCipher;
use crate::segment::format::{aad, nonce, record_crc_ok, Codec, RecordKind, HEADER_LEN, TAG_LEN};
use crate::segment::reader::{RecordCursor, Stop};
use crate::store::Inner;
use crate::{Error, Result, SegmentId};

/// Codec configuration (parameter sets) in force for the frames that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecConfig {
    /// The codec.
    pub codec: Codec,
    /// The configuration bytes as given to [`crate::StreamWriter::set_codec_config`].
    pub data: Bytes,
}

/// One frame read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Capture time, microseconds since the Unix epoch (UTC).
    pub ts_us: i64,
    /// The stream's own 90 kHz presentation timestamp, where given.
    pub pts_90k: Option<i64>,
    /// Whether the frame is a key frame (decodable on its own).
    pub key: bool,
    /// Codec of the payload.
    pub codec: Codec,
    /// The decrypted payload.
    pub payload: Bytes,
    /// Segment the frame came from.
    pub segment: SegmentId,
}

/// What a read yields: codec configuration changes interleaved with frames, in stored order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadItem {
    /// The codec configuration for the frames after it.
    Config(CodecConfig),
    /// A frame.
    Frame(Frame),
}

/// Where to read in one segment.
pub(crate) struct SegmentPlan {
    pub id: SegmentId,
    pub camera: String,
    /// Offset of the first record to read.
    pub start: u64,
    /// Config record to yield first when `start` is past the segment's first config.
    pub config_offset: Option<u64>,
    /// End of the readable records (footer offset, or the durable length of an open segment).
    pub end: u64,
}

/// Iterator over the frames of a camera in a time range; see [`crate::Store::read`]. Memory is
/// one read window (1 MiB or one frame) whatever the range's length.
pub struct FrameReader {
    pub(crate) inner: Arc<Inner>,
    pub(crate) plans: std::vec::IntoIter<SegmentPlan>,
    pub(crate) to_us: i64,
    pub(crate) current: Option<Current>,
    pub(crate) done: bool,
}

pub(crate) struct Current {
    id: SegmentId,
    path: std::path::PathBuf,
    cipher: SegmentCipher,
    cursor: RecordCursor,
    /// A config record to yield before the main cursor.
    config: Option<RecordCursor>,
}

impl FrameReader {
    fn open_next(&mut self) -> Result<bool> {
        let Some(plan) = self.plans.next() else {
            return Ok(false);
        };
        let path = self.inner.segment_path(&plan.camera, plan.id);
        let file = self.inner.vfs.open(&path).map_err(|e| Error::io("open segment", &path, e))?;
        let key = self
            .inner
            .keys
            .lock()
            .map_err(|_| Error::Poisoned("key store lock".into()))?
            .as_ref()
            .ok_or_else(|| Error::Decommissioned("the key store was destroyed".into()))?
            .get(plan.id)?;
        let cipher = SegmentCipher::new(&key);
        let config = plan
            .config_offset
            .filter(|&c| c < plan.start && c >= HEADER_LEN as u64)
            .map(|c| RecordCursor::without_crc_check(file.clone(), c, plan.end));
        let cursor = RecordCursor::without_crc_check(file, plan.start, plan.end);
        self.current = Some(Current { id: plan.id, path, cipher, cursor, config });
        Ok(true)
    }

    fn next_item(&mut self) -> Result<Option<ReadItem>> {
        loop {
            if self.done {
                return Ok(None);
            }
            if self.current.is_none() && !self.open_next()? {
                self.done = true;
                return Ok(None);
            }
            let Some(cur) = self.current.as_mut() else {
                continue;
            };
            let from_config = cur.config.is_some();
            let cursor = match cur.config.as_mut() {
                Some(c) => c,
                None => &mut cur.cursor,
            };
            let rec = cursor.next_record().map_err(|e| Error::io("read segment", &cur.path, e))?;
            if from_config {
                cur.config = None;
            }
            let rec = match rec {
                Ok(r) => r,
                Err(Stop::End) => {
                    self.current = None;
                    continue;
                }
                Err(Stop::Bad { offset, detail }) => {
                    return Err(self.inner.report_corruption(cur.path.clone(), Some(cur.id), Some(offset), detail));
                }
            };
            // The cursor did not check the CRC (see `RecordCursor::without_crc_check`): no
            // header field is acted on before it is authenticated, by AES-GCM for an encrypted
            // record or by the CRC for the footer.
            let h = rec.header;
            if h.kind == RecordKind::Footer {
                if !record_crc_ok(&h, &rec.header_bytes, &rec.body) {
                    return Err(self.inner.report_corruption(
                        cur.path.clone(),
                        Some(cur.id),
                        Some(rec.offset),
                        "record CRC mismatch".into(),
                    ));
                }
                self.current = None;
                continue;
            }
            // `RecordHeader::decode` refused an encrypted record shorter than its tag.
            let offset = rec.offset;
            let mut body = rec.body;
            let split = body.len() - TAG_LEN;
            let mut tag = [0u8; TAG_LEN];
            tag.copy_from_slice(&body[split..]);
            body.truncate(split);
            if !cur.cipher.open(&nonce(h.ordinal), &aad(cur.id, &rec.header_bytes), &mut body, &tag) {
                // A failed decryption may have overwritten the body: the CRC is checked over
                // the stored bytes, read again.
                let crc_ok =
                    cur.cursor.crc_ok_on_disk(&h, &rec.header_bytes, offset).map_err(|e| Error::io("read segment", &cur.path, e))?;
                let detail =
                    if crc_ok { "record fails AES-GCM authentication (damaged, or moved from elsewhere)" } else { "record CRC mismatch" };
                return Err(self.inner.report_corruption(cur.path.clone(), Some(cur.id), Some(offset), detail.to_string()));
            }
            if from_config && h.kind != RecordKind::CodecConfig {
                let detail = "key-frame index points at a record that is not a codec configuration".to_string();
                return Err(self.inner.report_corruption(cur.path.clone(), Some(cur.id), Some(offset), detail));
            }
            if h.kind == RecordKind::Video && h.ts_us >= self.to_us {
                self.done = true;
                return Ok(None);
            }
            let data = body.freeze();
            return Ok(Some(match h.kind {
                RecordKind::CodecConfig => ReadItem::Config(CodecConfig { codec: h.codec, data }),
                _ => ReadItem::Frame(Frame {
                    ts_us: h.ts_us,
                    pts_90k: h.pts(),
                    key: h.is_key(),
                    codec: h.codec,
                    payload: data,
                    segment: cur.id,
                }),
            }));
        }
    }
}

impl Iterator for FrameReader {
    type Item = Result<ReadItem>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_item() {
            Ok(Some(i)) => Some(Ok(i)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
