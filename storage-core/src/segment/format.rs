//! Byte layout of segment files. The single source of truth is FORMAT.md "Segment file"; the
//! offsets here are built one from the previous and checked by the compiler.

use crate::{Error, Result, SegmentId};

/// Largest frame payload accepted, in bytes. A 4K H.265 I-frame at high quality reaches a few
/// MiB; 16 MiB bounds one allocation per frame on read and write and still leaves headroom.
pub const FRAME_BYTES_MAX: usize = 16 << 20;
/// Largest codec configuration (VPS/SPS/PPS) accepted, in bytes. Real parameter sets are well
/// under 1 KiB; 64 KiB refuses garbage without refusing any encoder we know.
pub const CODEC_CONFIG_BYTES_MAX: usize = 64 << 10;
/// Longest camera id, in bytes (it is a directory name and sits in the segment header).
pub const CAMERA_ID_BYTES_MAX: usize = 64;
/// Records in one segment; the ordinal is the AES-GCM nonce, so it must never wrap. 2^20 is
/// 11.6 hours at 25 fps, far past the default roll.
pub const RECORDS_PER_SEGMENT_MAX: u32 = 1 << 20;
/// Key frames indexed in one segment's footer (24 bytes each, so the footer stays under 1.6 MiB).
pub const KEYFRAMES_PER_SEGMENT_MAX: usize = 1 << 16;
/// Largest record body: a frame plus its tag, or the biggest footer.
pub const RECORD_BODY_BYTES_MAX: usize = FRAME_BYTES_MAX + TAG_LEN;

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"CAMVSEG1";
pub(crate) const FORMAT_VERSION: u16 = 1;
pub(crate) const TAG_LEN: usize = 16;

// Segment header (FORMAT.md "Segment header").
pub(crate) const HEADER_LEN: usize = 128;
const H_VERSION: usize = 8;
const H_HEADER_LEN: usize = H_VERSION + 2;
const H_FLAGS: usize = H_HEADER_LEN + 2;
const H_SEGMENT_ID: usize = H_FLAGS + 4;
const H_CREATED: usize = H_SEGMENT_ID + 8;
const H_CAMERA_LEN: usize = H_CREATED + 8;
const H_CAMERA: usize = H_CAMERA_LEN + 8;
const H_CRC: usize = HEADER_LEN - 4;
const _: () = assert!(H_CAMERA + CAMERA_ID_BYTES_MAX <= H_CRC);

// Record header (FORMAT.md "Record").
pub(crate) const RECORD_HEADER_LEN: usize = 32;
const R_CRC: usize = 0;
const R_BODY_LEN: usize = R_CRC + 4;
const R_KIND: usize = R_BODY_LEN + 4;
const R_FLAGS: usize = R_KIND + 1;
const R_CODEC: usize = R_FLAGS + 1;
const R_RESERVED: usize = R_CODEC + 1;
const R_ORDINAL: usize = R_RESERVED + 1;
const R_TS: usize = R_ORDINAL + 4;
const R_PTS: usize = R_TS + 8;
const _: () = assert!(R_PTS + 8 == RECORD_HEADER_LEN);

// Footer body.
pub(crate) const FOOTER_FIXED_LEN: usize = 32;
pub(crate) const FOOTER_ENTRY_LEN: usize = 24;
/// Largest footer body.
pub(crate) const FOOTER_BYTES_MAX: usize = FOOTER_FIXED_LEN + FOOTER_ENTRY_LEN * KEYFRAMES_PER_SEGMENT_MAX;
const _: () = assert!(FOOTER_BYTES_MAX <= RECORD_BODY_BYTES_MAX);

pub(crate) const FLAG_KEY: u8 = 1;
pub(crate) const FLAG_PTS: u8 = 2;

/// Video codec of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// H.264 / AVC.
    H264,
    /// H.265 / HEVC.
    H265,
}

impl Codec {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Codec::H264 => 1,
            Codec::H265 => 2,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Codec> {
        match b {
            1 => Some(Codec::H264),
            2 => Some(Codec::H265),
            _ => None,
        }
    }
}

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordKind {
    /// An encrypted frame payload.
    Video = 1,
    /// Encrypted codec configuration (parameter sets) for the frames that follow.
    CodecConfig = 2,
    /// The clear key-frame index written when the segment is sealed; always the last record.
    Footer = 3,
}

impl RecordKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(RecordKind::Video),
            2 => Some(RecordKind::CodecConfig),
            3 => Some(RecordKind::Footer),
            _ => None,
        }
    }
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub crc: u32,
    pub body_len: u32,
    pub kind: RecordKind,
    pub flags: u8,
    pub codec: Codec,
    pub ordinal: u32,
    pub ts_us: i64,
    pub pts_90k: i64,
}

impl RecordHeader {
    pub(crate) fn is_key(&self) -> bool {
        self.flags & FLAG_KEY != 0
    }

    pub(crate) fn pts(&self) -> Option<i64> {
        (self.flags & FLAG_PTS != 0).then_some(self.pts_90k)
    }

    /// Record length on disk.
    pub(crate) fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.body_len)
    }

    /// Encodes everything but the CRC (filled by [`finish_record`]).
    pub(crate) fn encode(&self, out: &mut [u8]) {
        debug_assert!(self.body_len as usize <= RECORD_BODY_BYTES_MAX);
        out[R_CRC..R_CRC + 4].fill(0);
        out[R_BODY_LEN..R_BODY_LEN + 4].copy_from_slice(&self.body_len.to_le_bytes());
        out[R_KIND] = self.kind as u8;
        out[R_FLAGS] = self.flags;
        out[R_CODEC] = self.codec.to_byte();
        out[R_RESERVED] = 0;
        out[R_ORDINAL..R_ORDINAL + 4].copy_from_slice(&self.ordinal.to_le_bytes());
        out[R_TS..R_TS + 8].copy_from_slice(&self.ts_us.to_le_bytes());
        out[R_PTS..R_PTS + 8].copy_from_slice(&self.pts_90k.to_le_bytes());
    }

    /// Decodes a header, checking everything that can be checked without the body.
    pub(crate) fn decode(b: &[u8]) -> Option<RecordHeader> {
        if b.len() < RECORD_HEADER_LEN || b[R_RESERVED] != 0 {
            return None;
        }
        let h = RecordHeader {
            crc: le_u32(b, R_CRC),
            body_len: le_u32(b, R_BODY_LEN),
            kind: RecordKind::from_byte(b[R_KIND])?,
            flags: b[R_FLAGS],
            codec: Codec::from_byte(b[R_CODEC])?,
            ordinal: le_u32(b, R_ORDINAL),
            ts_us: le_i64(b, R_TS),
            pts_90k: le_i64(b, R_PTS),
        };
        let max = match h.kind {
            RecordKind::Footer => FOOTER_BYTES_MAX,
            RecordKind::CodecConfig => CODEC_CONFIG_BYTES_MAX + TAG_LEN,
            RecordKind::Video => RECORD_BODY_BYTES_MAX,
        };
        if h.body_len as usize > max || (h.kind != RecordKind::Footer && (h.body_len as usize) < TAG_LEN) {
            return None;
        }
        if h.flags & !(FLAG_KEY | FLAG_PTS) != 0 || h.ordinal >= RECORDS_PER_SEGMENT_MAX {
            return None;
        }
        Some(h)
    }
}

/// Computes and stores the CRC of a whole record (header followed by body).
pub(crate) fn finish_record(record: &mut [u8]) {
    let crc = crc32fast::hash(&record[R_BODY_LEN..]);
    record[R_CRC..R_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// True when the record's CRC matches.
pub(crate) fn record_crc_ok(header: &RecordHeader, header_bytes: &[u8], body: &[u8]) -> bool {
    let mut h = crc32fast::Hasher::new();
    h.update(&header_bytes[R_BODY_LEN..RECORD_HEADER_LEN]);
    h.update(body);
    h.finalize() == header.crc
}

/// The AES-GCM nonce of a record: its ordinal in the segment. Each segment has its own key and
/// is never appended to once closed or recovered, so (key, nonce) never repeats.
pub(crate) fn nonce(ordinal: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&ordinal.to_le_bytes());
    n
}

/// Associated data: the segment id and the clear header fields, so metadata cannot be altered
/// or a record moved to another segment without failing authentication.
pub(crate) fn aad(segment: SegmentId, header_bytes: &[u8]) -> [u8; 8 + RECORD_HEADER_LEN - 4] {
    let mut a = [0u8; 8 + RECORD_HEADER_LEN - 4];
    a[..8].copy_from_slice(&segment.0.to_le_bytes());
    a[8..].copy_from_slice(&header_bytes[R_BODY_LEN..RECORD_HEADER_LEN]);
    a
}

/// The fixed header at the start of every segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub segment: SegmentId,
    pub created_us: i64,
    pub camera: String,
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        debug_assert!(self.camera.len() <= CAMERA_ID_BYTES_MAX);
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(SEGMENT_MAGIC);
        h[H_VERSION..H_VERSION + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[H_HEADER_LEN..H_HEADER_LEN + 2].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        h[H_SEGMENT_ID..H_SEGMENT_ID + 8].copy_from_slice(&self.segment.0.to_le_bytes());
        h[H_CREATED..H_CREATED + 8].copy_from_slice(&self.created_us.to_le_bytes());
        h[H_CAMERA_LEN] = self.camera.len() as u8;
        h[H_CAMERA..H_CAMERA + self.camera.len()].copy_from_slice(self.camera.as_bytes());
        let crc = crc32fast::hash(&h[..H_CRC]);
        h[H_CRC..].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub(crate) fn decode(h: &[u8]) -> Result<SegmentHeader, String> {
        if h.len() < HEADER_LEN || &h[..8] != SEGMENT_MAGIC {
            return Err("not a camvault segment (bad magic)".into());
        }
        if crc32fast::hash(&h[..H_CRC]) != le_u32(h, H_CRC) {
            return Err("segment header fails its CRC".into());
        }
        let version = u16::from_le_bytes([h[H_VERSION], h[H_VERSION + 1]]);
        if version != FORMAT_VERSION {
            return Err(format!("segment format version {version} is not supported"));
        }
        let cam_len = h[H_CAMERA_LEN] as usize;
        if cam_len == 0 || cam_len > CAMERA_ID_BYTES_MAX {
            return Err("segment header camera id length out of range".into());
        }
        let camera = std::str::from_utf8(&h[H_CAMERA..H_CAMERA + cam_len]).map_err(|_| "camera id is not UTF-8".to_string())?;
        Ok(SegmentHeader { segment: SegmentId(le_u64(h, H_SEGMENT_ID)), created_us: le_i64(h, H_CREATED), camera: camera.to_string() })
    }
}

/// One key frame in a segment's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyframeEntry {
    pub ts_us: i64,
    /// Offset of the key frame's record.
    pub offset: u64,
    /// Offset of the codec configuration record in force for it.
    pub config_offset: u64,
}

/// The footer: summary and key-frame index of a sealed segment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Footer {
    pub frame_count: u32,
    pub payload_bytes: u64,
    pub first_ts_us: i64,
    pub last_ts_us: i64,
    pub keyframes: Vec<KeyframeEntry>,
}

impl Footer {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        debug_assert!(self.keyframes.len() <= KEYFRAMES_PER_SEGMENT_MAX);
        out.extend_from_slice(&(self.keyframes.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.frame_count.to_le_bytes());
        out.extend_from_slice(&self.payload_bytes.to_le_bytes());
        out.extend_from_slice(&self.first_ts_us.to_le_bytes());
        out.extend_from_slice(&self.last_ts_us.to_le_bytes());
        for k in &self.keyframes {
            out.extend_from_slice(&k.ts_us.to_le_bytes());
            out.extend_from_slice(&k.offset.to_le_bytes());
            out.extend_from_slice(&k.config_offset.to_le_bytes());
        }
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Footer, String> {
        if b.len() < FOOTER_FIXED_LEN {
            return Err("footer too short".into());
        }
        let n = le_u32(b, 0) as usize;
        if n > KEYFRAMES_PER_SEGMENT_MAX || b.len() != FOOTER_FIXED_LEN + n * FOOTER_ENTRY_LEN {
            return Err(format!("footer claims {n} key frames in {} bytes", b.len()));
        }
        let mut keyframes = Vec::with_capacity(n);
        for i in 0..n {
            let at = FOOTER_FIXED_LEN + i * FOOTER_ENTRY_LEN;
            keyframes.push(KeyframeEntry { ts_us: le_i64(b, at), offset: le_u64(b, at + 8), config_offset: le_u64(b, at + 16) });
        }
        Ok(Footer {
            frame_count: le_u32(b, 4),
            payload_bytes: le_u64(b, 8),
            first_ts_us: le_i64(b, 16),
            last_ts_us: le_i64(b, 24),
            keyframes,
        })
    }
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn le_i64(b: &[u8], at: usize) -> i64 {
    le_u64(b, at) as i64
}

/// Checks a camera id: 1..=64 bytes of `[A-Za-z0-9._-]`, not starting with a dot (it names a
/// directory). The store applies it to every stream; a registry in front of the store applies
/// it at registration.
pub fn check_camera_id(camera: &str) -> Result<()> {
    if camera.len() > CAMERA_ID_BYTES_MAX {
        return Err(Error::LimitExceeded { what: "camera id bytes", actual: camera.len() as u64, max: CAMERA_ID_BYTES_MAX as u64 });
    }
    let ok = !camera.is_empty()
        && !camera.starts_with('.')
        && camera.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "camera id {camera:?} must be 1-64 characters of A-Z a-z 0-9 . _ - and not start with a dot"
        )));
    }
    Ok(())
}

/// A complete footer record (header + clear body), as the writer and recovery append it.
pub(crate) fn footer_record(ordinal: u32, codec: Codec, footer: &Footer) -> Vec<u8> {
    let mut body = Vec::with_capacity(FOOTER_FIXED_LEN + FOOTER_ENTRY_LEN * footer.keyframes.len());
    footer.encode(&mut body);
    let h = RecordHeader {
        crc: 0,
        body_len: body.len() as u32,
        kind: RecordKind::Footer,
        flags: 0,
        codec,
        ordinal,
        ts_us: footer.last_ts_us,
        pts_90k: 0,
    };
    let mut rec = vec![0u8; RECORD_HEADER_LEN];
    h.encode(&mut rec);
    rec.extend_from_slice(&body);
    finish_record(&mut rec);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of FORMAT.md "Record": a key frame, ordinal 3, ts 1 s, pts 90000,
    /// H.265, 4-byte payload (20-byte body with the tag).
    #[test]
    fn record_header_matches_the_design_example() {
        let h = RecordHeader {
            crc: 0,
            body_len: 20,
            kind: RecordKind::Video,
            flags: FLAG_KEY | FLAG_PTS,
            codec: Codec::H265,
            ordinal: 3,
            ts_us: 1_000_000,
            pts_90k: 90_000,
        };
        let mut b = [0xffu8; RECORD_HEADER_LEN];
        h.encode(&mut b);
        let expected: [u8; RECORD_HEADER_LEN] = [
            0, 0, 0, 0, // crc (filled by finish_record)
            20, 0, 0, 0, // body_len
            1, 3, 2, 0, // kind=video, flags=key|pts, codec=H.265, reserved
            3, 0, 0, 0, // ordinal
            0x40, 0x42, 0x0f, 0, 0, 0, 0, 0, // ts_us = 1_000_000
            0x90, 0x5f, 0x01, 0, 0, 0, 0, 0, // pts_90k = 90_000
        ];
        assert_eq!(b, expected);
        assert_eq!(RecordHeader::decode(&b), Some(h));
        assert_eq!(nonce(3), [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn decode_refuses_what_cannot_be_a_record() {
        let h =
            RecordHeader { crc: 0, body_len: 20, kind: RecordKind::Video, flags: 0, codec: Codec::H264, ordinal: 0, ts_us: 0, pts_90k: 0 };
        let mut b = [0u8; RECORD_HEADER_LEN];
        h.encode(&mut b);
        let mut bad_kind = b;
        bad_kind[8] = 9;
        let mut bad_codec = b;
        bad_codec[10] = 7;
        let mut bad_flags = b;
        bad_flags[9] = 0x80;
        let mut too_long = b;
        too_long[4..8].copy_from_slice(&(RECORD_BODY_BYTES_MAX as u32 + 1).to_le_bytes());
        let mut no_tag = b;
        no_tag[4..8].copy_from_slice(&15u32.to_le_bytes());
        for (what, x) in [("kind", bad_kind), ("codec", bad_codec), ("flags", bad_flags), ("length", too_long), ("tag", no_tag)] {
            assert_eq!(RecordHeader::decode(&x), None, "{what}");
        }
    }

    #[test]
    fn segment_header_round_trips_and_checks_its_crc() {
        let h = SegmentHeader { segment: SegmentId(0x0102), created_us: 5, camera: "cam-1".into() };
        let mut b = h.encode();
        assert_eq!(&b[..8], b"CAMVSEG1");
        assert_eq!(&b[8..12], &[1, 0, 128, 0]);
        assert_eq!(&b[16..24], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(b[32], 5);
        assert_eq!(&b[40..45], b"cam-1");
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        b[41] ^= 1;
        assert!(SegmentHeader::decode(&b).is_err());
    }

    #[test]
    fn footer_round_trips() {
        let f = Footer {
            frame_count: 3,
            payload_bytes: 99,
            first_ts_us: -5,
            last_ts_us: 7,
            keyframes: vec![
                KeyframeEntry { ts_us: -5, offset: 160, config_offset: 128 },
                KeyframeEntry { ts_us: 7, offset: 900, config_offset: 128 },
            ],
        };
        let rec = footer_record(4, Codec::H264, &f);
        let h = RecordHeader::decode(&rec).expect("header");
        assert_eq!(h.kind, RecordKind::Footer);
        assert!(record_crc_ok(&h, &rec[..RECORD_HEADER_LEN], &rec[RECORD_HEADER_LEN..]));
        assert_eq!(Footer::decode(&rec[RECORD_HEADER_LEN..]), Ok(f));
        assert!(Footer::decode(&rec[RECORD_HEADER_LEN..rec.len() - 1]).is_err());
    }

    #[test]
    fn camera_ids() {
        for ok in ["cam-1", "A.b_c-9", &"x".repeat(64)] {
            assert!(check_camera_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(check_camera_id(bad).is_err(), "{bad}");
        }
    }
}
