//! Just enough H.264/H.265 bitstream parsing for ingest and MP4 export: NAL splitting, access
//! unit boundaries, parameter sets, picture size, and the `avcC`/`hvcC` decoder configuration
//! records (ISO/IEC 14496-15).

use storage_core::Codec;

/// The start-code searcher, built once: building one per frame was 1% of an export's muxing
/// thread (BENCHMARKS.md, History).
static START_CODE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(&[0u8, 0, 1]));

/// NAL units of an Annex B byte stream, without their start codes. The start-code search is
/// `memchr`'s vectorised substring search: export runs every stored byte through here.
pub fn nals(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for i in START_CODE.find_iter(data) {
        if let Some(s) = start {
            // A 4-byte start code (and trailing_zero_8bits) leaves zeros before the match.
            let mut end = i;
            while end > s && data[end - 1] == 0 {
                end -= 1;
            }
            if end > s {
                out.push(&data[s..end]);
            }
        }
        start = Some(i + 3);
    }
    if let Some(s) = start {
        if s < data.len() {
            out.push(&data[s..]);
        }
    }
    out
}

/// NAL type.
pub fn nal_type(codec: Codec, nal: &[u8]) -> u8 {
    match (codec, nal.first()) {
        (Codec::H264, Some(b)) => b & 0x1f,
        (_, Some(b)) => (b >> 1) & 0x3f,
        _ => 0xff,
    }
}

/// Parameter set (SPS/PPS/VPS) or access unit delimiter: carried in the sample description, not
/// in MP4 samples.
pub fn is_parameter_set_or_aud(codec: Codec, t: u8) -> bool {
    match codec {
        Codec::H264 => (7..=9).contains(&t),
        _ => matches!(t, 32..=35),
    }
}

/// A slice (VCL) NAL.
pub fn is_vcl(codec: Codec, t: u8) -> bool {
    match codec {
        Codec::H264 => (1..=5).contains(&t),
        _ => t < 32,
    }
}

/// A random access point (IDR / IRAP).
pub fn is_key(codec: Codec, t: u8) -> bool {
    match codec {
        Codec::H264 => t == 5,
        _ => (16..=21).contains(&t),
    }
}

/// Whether a VCL NAL starts a new picture (first_mb_in_slice == 0 / first_slice_segment_in_pic).
pub fn starts_picture(codec: Codec, nal: &[u8]) -> bool {
    match codec {
        Codec::H264 => nal.get(1).is_some_and(|b| b & 0x80 != 0),
        _ => nal.get(2).is_some_and(|b| b & 0x80 != 0),
    }
}

/// Most NAL units looked at for a slice by [`check_access_unit`]: parameter sets, SEI and
/// delimiters come first, a handful at most.
const NALS_BEFORE_SLICE_MAX: usize = 64;

/// Checks that `payload` is an access unit of `codec` in Annex B: it starts with a start code
/// and holds a slice (VCL) NAL unit. Cheap: it stops at the first slice.
pub fn check_access_unit(codec: Codec, payload: &[u8]) -> Result<(), String> {
    let lead = payload.iter().take_while(|&&b| b == 0).count();
    if lead < 2 || payload.get(lead) != Some(&1) {
        let hint =
            if payload.len() >= 4 && u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize + 4 <= payload.len() {
                " (it looks length-prefixed, as in MP4: replace each 4-byte length with a start code 00 00 00 01)"
            } else {
                ""
            };
        return Err(format!("the payload is not Annex B: it does not start with a start code{hint}"));
    }
    let mut starts = START_CODE.find_iter(payload).peekable();
    for _ in 0..NALS_BEFORE_SLICE_MAX {
        let Some(at) = starts.next() else { break };
        let nal = &payload[at + 3..];
        if nal.first().is_some_and(|&b| b & 0x80 == 0 && is_vcl(codec, nal_type(codec, nal))) && nal_header_valid(codec, nal) {
            return Ok(());
        }
    }
    Err(format!("the payload holds no {} slice NAL unit (is the stream's codec right?)", codec_name(codec)))
}

fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::H264 => "H.264",
        _ => "H.265",
    }
}

/// An H.265 NAL header is two bytes, and its `nuh_temporal_id_plus1` is never 0.
fn nal_header_valid(codec: Codec, nal: &[u8]) -> bool {
    codec == Codec::H264 || nal.get(1).is_some_and(|b| b & 7 != 0)
}

/// Removes emulation prevention bytes.
fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

struct Bits<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn u(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.b.get(self.pos / 8)?;
            v = (v << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Some(v)
    }
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.u(1)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u32 << zeros) - 1 + self.u(zeros)?)
    }
    fn se(&mut self) -> Option<i32> {
        let k = self.ue()?;
        Some(if k % 2 == 1 { k.div_ceil(2) as i32 } else { -((k / 2) as i32) })
    }
}

/// `profile_idc` values of H.264 (Annex A, G, H): anything else is not an SPS.
const H264_PROFILES: [u32; 16] = [66, 77, 88, 100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135];

/// Picture size from an H.264 SPS, which must be well formed: every field this reads is
/// checked against the range H.264 7.4.2.1.1 gives it (a random byte string is refused here,
/// not stored to make an export that no player opens).
fn h264_size(sps: &[u8]) -> Option<(u32, u32)> {
    let r = rbsp(sps);
    let mut b = Bits { b: &r, pos: 8 };
    let profile = b.u(8)?;
    if !H264_PROFILES.contains(&profile) {
        return None;
    }
    b.u(8)?; // constraint flags
    let level = b.u(8)?;
    if level > 62 || b.ue()? > 31 {
        return None; // level_idc up to 6.2 (some firmware writes 0), seq_parameter_set_id 0..=31
    }
    let mut chroma = 1;
    if matches!(profile, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        chroma = b.ue()?;
        if chroma > 3 {
            return None;
        }
        if chroma == 3 {
            b.u(1)?;
        }
        if b.ue()? > 6 || b.ue()? > 6 {
            return None; // bit depths 8..=14
        }
        b.u(1)?;
        if b.u(1)? == 1 {
            for i in 0..if chroma == 3 { 12 } else { 8 } {
                if b.u(1)? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..size {
                        if next != 0 {
                            // delta_scale is -128..=127 (H.264 7.4.2.1.1.1): anything else is
                            // not an SPS, and would overflow the sum.
                            let delta = b.se()?;
                            if !(-128..=127).contains(&delta) {
                                return None;
                            }
                            next = (last + delta + 256) % 256;
                        }
                        last = if next == 0 { last } else { next };
                    }
                }
            }
        }
    }
    log2_minus4(b.ue()?)?; // log2_max_frame_num
    match b.ue()? {
        0 => {
            log2_minus4(b.ue()?)?;
        }
        1 => {
            b.u(1)?;
            b.se()?;
            b.se()?;
            let cycle = b.ue()?;
            if cycle > 255 {
                return None;
            }
            for _ in 0..cycle {
                b.se()?;
            }
        }
        2 => {}
        _ => return None,
    }
    if b.ue()? > 16 {
        return None; // max_num_ref_frames
    }
    b.u(1)?;
    let w_mbs = b.ue()?.checked_add(1)?;
    let h_units = b.ue()?.checked_add(1)?;
    let frame_mbs_only = b.u(1)?;
    if frame_mbs_only == 0 {
        b.u(1)?;
    }
    b.u(1)?;
    let (mut w, mut h) = (w_mbs.checked_mul(16)?, h_units.checked_mul(16 * (2 - frame_mbs_only))?);
    if b.u(1)? == 1 {
        let (l, rr, t, bo) = (b.ue()?, b.ue()?, b.ue()?, b.ue()?);
        let (cx, cy) = match chroma {
            0 | 3 => (1, 2 - frame_mbs_only),
            1 => (2, 2 * (2 - frame_mbs_only)),
            _ => (2, 2 - frame_mbs_only),
        };
        w = w.saturating_sub(l.saturating_add(rr).saturating_mul(cx));
        h = h.saturating_sub(t.saturating_add(bo).saturating_mul(cy));
    }
    Some((w, h))
}

/// Width, height, chroma format, luma and chroma bit depth (minus 8), the 12-byte general
/// profile_tier_level and the sub-layer count of an H.265 SPS.
type H265Sps = (u32, u32, u32, u32, u32, [u8; 12], u32);

/// Parses what `hvcC` needs from an H.265 SPS.
fn h265_sps(sps: &[u8]) -> Option<H265Sps> {
    let r = rbsp(sps);
    let mut b = Bits { b: &r, pos: 16 };
    b.u(4)?;
    let max_sub_layers = b.u(3)?;
    b.u(1)?;
    let start = b.pos / 8;
    let ptl: [u8; 12] = r.get(start..start + 12)?.try_into().ok()?;
    // general_profile_idc: 1..=11 are the profiles H.265 defines (A.3); another, with no
    // compatibility flag either, is not an SPS a decoder takes.
    // Some firmware writes profile_idc 0 and sets only the compatibility flags.
    if !(1..=11).contains(&(ptl[0] & 0x1f)) && ptl[1..5] == [0; 4] {
        return None;
    }
    b.pos += 96;
    let mut sub_profile = [false; 8];
    let mut sub_level = [false; 8];
    for i in 0..max_sub_layers as usize {
        sub_profile[i] = b.u(1)? == 1;
        sub_level[i] = b.u(1)? == 1;
    }
    if max_sub_layers > 0 {
        for _ in max_sub_layers..8 {
            b.u(2)?;
        }
    }
    for i in 0..max_sub_layers as usize {
        if sub_profile[i] {
            b.pos += 88;
        }
        if sub_level[i] {
            b.pos += 8;
        }
    }
    if b.ue()? > 15 {
        return None; // sps_seq_parameter_set_id
    }
    let chroma = b.ue()?;
    if chroma == 3 {
        b.u(1)?;
    }
    let (mut w, mut h) = (b.ue()?, b.ue()?);
    if b.u(1)? == 1 {
        let (l, rr, t, bo) = (b.ue()?, b.ue()?, b.ue()?, b.ue()?);
        let (cx, cy) = match chroma {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        w = w.saturating_sub(l.saturating_add(rr).saturating_mul(cx));
        h = h.saturating_sub(t.saturating_add(bo).saturating_mul(cy));
    }
    let (bl, bc) = (b.ue()?, b.ue()?);
    // chroma_format_idc is 0..=3 and bit depths are 8..=16 (H.265 7.4.3.2.1): the `hvcC`
    // fields they fill are that wide.
    if chroma > 3 || bl > 8 || bc > 8 {
        return None;
    }
    Some((w, h, chroma, bl, bc, ptl, max_sub_layers))
}

/// The sample description of a stream: box type, configuration record, width, height.
pub struct SampleDescription {
    /// Sample entry type: `avc1` or `hvc1`.
    pub fourcc: [u8; 4],
    /// Configuration box type: `avcC` or `hvcC`.
    pub config_box: [u8; 4],
    /// The configuration record (the box's body).
    pub config: Vec<u8>,
    /// Coded width, pixels.
    pub width: u16,
    /// Coded height, pixels.
    pub height: u16,
}

/// Builds `avcC` / `hvcC` from the stream's parameter sets (Annex B).
pub fn sample_description(codec: Codec, config: &[u8]) -> Result<SampleDescription, String> {
    let units = nals(config);
    let of = |t: u8| -> Vec<&[u8]> { units.iter().copied().filter(|n| nal_type(codec, n) == t).collect() };
    match codec {
        Codec::H264 => {
            let (sps, pps) = (of(7), of(8));
            let s0 = sps.first().ok_or("the H.264 codec configuration has no SPS")?;
            if pps.is_empty() || s0.len() < 4 {
                return Err("the H.264 codec configuration needs an SPS and a PPS".into());
            }
            let (w, h) = h264_size(s0).ok_or("the H.264 SPS does not parse")?;
            let (w, h) = picture_size(w, h)?;
            check_counts(&sps, 31, &pps, 255)?;
            let mut c = vec![1, s0[1], s0[2], s0[3], 0xff, 0xe0 | sps.len() as u8];
            for s in &sps {
                c.extend_from_slice(&(s.len() as u16).to_be_bytes());
                c.extend_from_slice(s);
            }
            c.push(pps.len() as u8);
            for p in &pps {
                c.extend_from_slice(&(p.len() as u16).to_be_bytes());
                c.extend_from_slice(p);
            }
            Ok(SampleDescription { fourcc: *b"avc1", config_box: *b"avcC", config: c, width: w, height: h })
        }
        _ => {
            let (vps, sps, pps) = (of(32), of(33), of(34));
            let s0 = sps.first().ok_or("the H.265 codec configuration has no SPS")?;
            if vps.is_empty() || pps.is_empty() {
                return Err("the H.265 codec configuration needs a VPS, an SPS and a PPS".into());
            }
            let (w, h, chroma, bl, bc, ptl, sub_layers) = h265_sps(s0).ok_or("the H.265 SPS does not parse")?;
            let (w, h) = picture_size(w, h)?;
            check_counts(&sps, usize::from(u16::MAX), &pps, usize::from(u16::MAX))?;
            check_counts(&vps, usize::from(u16::MAX), &[], 0)?;
            let mut c = vec![1];
            c.extend_from_slice(&ptl);
            c.extend_from_slice(&[0xf0, 0x00, 0xfc, 0xfc | chroma as u8, 0xf8 | bl as u8, 0xf8 | bc as u8, 0, 0]);
            c.push(((sub_layers + 1) as u8) << 3 | 0x04 | 0x03);
            c.push(3);
            for (t, list) in [(32u8, &vps), (33, &sps), (34, &pps)] {
                c.push(0x80 | t);
                c.extend_from_slice(&(list.len() as u16).to_be_bytes());
                for n in list.iter() {
                    c.extend_from_slice(&(n.len() as u16).to_be_bytes());
                    c.extend_from_slice(n);
                }
            }
            Ok(SampleDescription { fourcc: *b"hvc1", config_box: *b"hvcC", config: c, width: w, height: h })
        }
    }
}

/// The picture size as the sample description holds it (16 bits each), refused when the SPS
/// states none or more.
fn picture_size(w: u32, h: u32) -> Result<(u16, u16), String> {
    match (u16::try_from(w), u16::try_from(h)) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(format!("the SPS states a picture of {w}x{h} pixels")),
    }
}

/// The configuration record's counts and 16-bit lengths: more parameter sets than it can list,
/// or one longer than 65535 bytes, is refused rather than written truncated.
fn check_counts(sets: &[&[u8]], sets_max: usize, pps: &[&[u8]], pps_max: usize) -> Result<(), String> {
    if sets.len() > sets_max || pps.len() > pps_max {
        return Err(format!("{} and {} parameter sets: more than a decoder configuration record lists", sets.len(), pps.len()));
    }
    if sets.iter().chain(pps).any(|n| n.len() > usize::from(u16::MAX)) {
        return Err("a parameter set longer than 65535 bytes".into());
    }
    Ok(())
}

/// One access unit of an Annex B file, with the parameter sets in force.
pub struct AccessUnit {
    /// The access unit, Annex B.
    pub data: Vec<u8>,
    /// Whether it starts a GOP (IDR / IRAP).
    pub key: bool,
}

/// Splits an Annex B elementary stream into access units; returns them and the first set of
/// parameter sets (as Annex B) for the codec configuration.
pub fn access_units(codec: Codec, data: &[u8]) -> (Vec<AccessUnit>, Vec<u8>) {
    let mut aus = Vec::new();
    let mut config = Vec::new();
    let mut have_config = false;
    let mut cur: Vec<u8> = Vec::new();
    let mut cur_has_vcl = false;
    let mut cur_key = false;
    let mut pending: Vec<u8> = Vec::new();
    for n in nals(data) {
        let t = nal_type(codec, n);
        let vcl = is_vcl(codec, t);
        if vcl {
            if cur_has_vcl && starts_picture(codec, n) {
                aus.push(AccessUnit { data: std::mem::take(&mut cur), key: cur_key });
                cur_key = false;
            }
            cur.append(&mut pending);
            cur_has_vcl = true;
            cur_key |= is_key(codec, t);
            cur.extend_from_slice(&[0, 0, 0, 1]);
            cur.extend_from_slice(n);
        } else {
            if is_parameter_set_or_aud(codec, t) && !have_config && !matches!((codec, t), (Codec::H264, 9) | (Codec::H265, 35)) {
                config.extend_from_slice(&[0, 0, 0, 1]);
                config.extend_from_slice(n);
            }
            if have_config_complete(codec, &config) {
                have_config = true;
            }
            // Non-VCL NALs belong to the next picture.
            pending.extend_from_slice(&[0, 0, 0, 1]);
            pending.extend_from_slice(n);
        }
    }
    if cur_has_vcl {
        cur.append(&mut pending);
        aus.push(AccessUnit { data: cur, key: cur_key });
    }
    (aus, config)
}

fn have_config_complete(codec: Codec, config: &[u8]) -> bool {
    let types: Vec<u8> = nals(config).iter().map(|n| nal_type(codec, n)).collect();
    match codec {
        Codec::H264 => types.contains(&7) && types.contains(&8),
        _ => types.contains(&32) && types.contains(&33) && types.contains(&34),
    }
}

/// An access unit as MP4 sample data: 4-byte lengths instead of start codes, parameter sets and
/// delimiters left to the sample description.
pub fn to_length_prefixed(codec: Codec, au: &[u8], out: &mut Vec<u8>) {
    for n in nals(au) {
        if is_parameter_set_or_aud(codec, nal_type(codec, n)) {
            continue;
        }
        out.extend_from_slice(&(n.len() as u32).to_be_bytes());
        out.extend_from_slice(n);
    }
}

/// What slice-header parsing needs from the parameter sets.
#[derive(Debug, Clone, Copy, Default)]
struct PocParams {
    log2_max_frame_num: u32,
    poc_type: u32,
    log2_max_poc_lsb: u32,
    frame_mbs_only: bool,
    separate_colour_plane: bool,
    // H.265 PPS fields.
    output_flag_present: bool,
    num_extra_slice_header_bits: u32,
}

/// A `log2_max_..._minus4` field: 0..=12 in both codecs.
fn log2_minus4(v: u32) -> Option<u32> {
    (v <= 12).then_some(v + 4)
}

fn h264_poc_params(sps: &[u8]) -> Option<PocParams> {
    let r = rbsp(sps);
    let mut b = Bits { b: &r, pos: 8 };
    let profile = b.u(8)?;
    b.u(16)?;
    b.ue()?;
    let mut p = PocParams::default();
    if matches!(profile, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        let chroma = b.ue()?;
        if chroma == 3 {
            p.separate_colour_plane = b.u(1)? == 1;
        }
        b.ue()?;
        b.ue()?;
        b.u(1)?;
        if b.u(1)? == 1 {
            // Scaling matrices: rare in CCTV streams; without them parsed, fall back to decode order.
            return None;
        }
    }
    // Both are 4..=16 (H.264 7.4.2.1.1): checked, as the shift by them would overflow.
    p.log2_max_frame_num = log2_minus4(b.ue()?)?;
    p.poc_type = b.ue()?;
    if p.poc_type == 0 {
        p.log2_max_poc_lsb = log2_minus4(b.ue()?)?;
    } else if p.poc_type == 1 {
        return Some(p);
    }
    b.ue()?;
    b.u(1)?;
    b.ue()?;
    b.ue()?;
    p.frame_mbs_only = b.u(1)? == 1;
    Some(p)
}

fn h265_poc_params(sps: &[u8], pps: &[u8]) -> Option<PocParams> {
    let r = rbsp(sps);
    let mut b = Bits { b: &r, pos: 16 };
    b.u(4)?;
    let max_sub_layers = b.u(3)?;
    b.u(1)?;
    b.pos += 96;
    let mut sub = [(false, false); 8];
    for s in sub.iter_mut().take(max_sub_layers as usize) {
        *s = (b.u(1)? == 1, b.u(1)? == 1);
    }
    if max_sub_layers > 0 {
        for _ in max_sub_layers..8 {
            b.u(2)?;
        }
    }
    for (p, l) in sub.iter().take(max_sub_layers as usize) {
        b.pos += if *p { 88 } else { 0 } + if *l { 8 } else { 0 };
    }
    b.ue()?;
    let mut p = PocParams::default();
    if b.ue()? == 3 {
        p.separate_colour_plane = b.u(1)? == 1;
    }
    b.ue()?;
    b.ue()?;
    if b.u(1)? == 1 {
        b.ue()?;
        b.ue()?;
        b.ue()?;
        b.ue()?;
    }
    b.ue()?;
    b.ue()?;
    p.log2_max_poc_lsb = log2_minus4(b.ue()?)?;
    let r = rbsp(pps);
    let mut b = Bits { b: &r, pos: 16 };
    b.ue()?;
    b.ue()?;
    b.u(1)?; // dependent_slice_segments_enabled_flag
    p.output_flag_present = b.u(1)? == 1;
    p.num_extra_slice_header_bits = b.u(3)?;
    Some(p)
}

/// Picture order count LSB (and whether the picture resets the count) from a picture's first
/// slice.
fn poc_lsb(codec: Codec, p: &PocParams, nal: &[u8]) -> Option<(u32, bool)> {
    let r = rbsp(nal);
    let t = nal_type(codec, nal);
    match codec {
        Codec::H264 => {
            let mut b = Bits { b: &r, pos: 8 };
            b.ue()?;
            b.ue()?;
            b.ue()?;
            if p.separate_colour_plane {
                b.u(2)?;
            }
            b.u(p.log2_max_frame_num)?;
            if !p.frame_mbs_only && b.u(1)? == 1 {
                b.u(1)?;
            }
            if t == 5 {
                b.ue()?;
            }
            Some((b.u(p.log2_max_poc_lsb)?, t == 5))
        }
        _ => {
            let mut b = Bits { b: &r, pos: 16 };
            b.u(1)?;
            if (16..=23).contains(&t) {
                b.u(1)?;
            }
            b.ue()?;
            b.u(p.num_extra_slice_header_bits)?;
            b.ue()?;
            if p.output_flag_present {
                b.u(1)?;
            }
            if p.separate_colour_plane {
                b.u(2)?;
            }
            if t == 19 || t == 20 {
                return Some((0, true));
            }
            Some((b.u(p.log2_max_poc_lsb)?, false))
        }
    }
}

/// The presentation index of each access unit (decode order in, display order out), from the
/// picture order counts; decode order when the stream does not need reordering or cannot be
/// parsed. Indices are unique and start at 0.
pub fn presentation_order(codec: Codec, config: &[u8], aus: &[AccessUnit]) -> Vec<i64> {
    let decode: Vec<i64> = (0..aus.len() as i64).collect();
    let units = nals(config);
    let find = |t: u8| units.iter().copied().find(|n| nal_type(codec, n) == t);
    let params = match codec {
        Codec::H264 => find(7).and_then(h264_poc_params),
        _ => find(33).zip(find(34)).and_then(|(s, p)| h265_poc_params(s, p)),
    };
    let Some(p) = params else { return decode };
    if codec == Codec::H264 && p.poc_type != 0 {
        return decode;
    }
    let max = 1i64 << p.log2_max_poc_lsb;
    let (mut prev_msb, mut prev_lsb) = (0i64, 0i64);
    let mut pocs = Vec::with_capacity(aus.len());
    for au in aus {
        let first_vcl = nals(&au.data).into_iter().find(|n| is_vcl(codec, nal_type(codec, n)));
        let Some(nal) = first_vcl else { return decode };
        let Some((lsb, reset)) = poc_lsb(codec, &p, nal) else { return decode };
        let lsb = i64::from(lsb);
        if reset {
            prev_msb = 0;
            prev_lsb = 0;
        }
        let msb = if lsb < prev_lsb && prev_lsb - lsb >= max / 2 {
            prev_msb + max
        } else if lsb > prev_lsb && lsb - prev_lsb > max / 2 {
            prev_msb - max
        } else {
            prev_msb
        };
        let reference = match codec {
            Codec::H264 => nal[0] & 0x60 != 0,
            _ => nal.get(1).is_some_and(|b| b & 7 == 1),
        };
        if reference || reset {
            prev_msb = msb;
            prev_lsb = lsb;
        }
        pocs.push(msb + lsb);
    }
    // Rank by POC within each run that starts at a key frame.
    let mut out = vec![0i64; aus.len()];
    let mut start = 0;
    while start < aus.len() {
        let mut end = start + 1;
        while end < aus.len() && !aus[end].key {
            end += 1;
        }
        let mut idx: Vec<usize> = (start..end).collect();
        idx.sort_by_key(|&i| (pocs[i], i));
        for (rank, i) in idx.into_iter().enumerate() {
            out[i] = (start + rank) as i64;
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nals_split_at_three_and_four_byte_start_codes_and_drop_trailing_zeros() {
        let stream = [
            &[0xff, 0xee][..],                  // bytes before the first start code are not a NAL
            &[0, 0, 0, 1, 0x67, 1, 2],          // 4-byte start code
            &[0, 0, 1, 0x68, 3],                // 3-byte start code
            &[0, 0, 0, 0, 1, 0x65, 0],          // trailing_zero_8bits before a 4-byte start code
            &[0, 0, 1],                         // an empty NAL is skipped
            &[0, 0, 1, 0x41, 9, 0, 3, 0, 0, 2], // emulation prevention keeps 00 00 03 inside
        ]
        .concat();
        let got = nals(&stream);
        let want: Vec<&[u8]> = vec![&[0x67, 1, 2], &[0x68, 3], &[0x65], &[0x41, 9, 0, 3, 0, 0, 2]];
        assert_eq!(got, want);
        assert!(nals(&[0, 0, 2, 0, 0]).is_empty(), "no start code, no NAL");
        assert_eq!(nals(&[0, 0, 1, 0x09, 0xf0]), vec![&[0x09, 0xf0][..]]);
    }

    #[test]
    fn length_prefixed_samples_leave_parameter_sets_to_the_sample_description() {
        let au = [&[0, 0, 0, 1, 0x09, 0xf0][..], &[0, 0, 0, 1, 0x67, 7], &[0, 0, 1, 0x68, 8], &[0, 0, 1, 0x65, 1, 2, 3]].concat();
        let mut out = Vec::new();
        to_length_prefixed(Codec::H264, &au, &mut out);
        assert_eq!(out, [0, 0, 0, 4, 0x65, 1, 2, 3]);
    }

    /// Writes exp-Golomb and fixed fields, for parameter sets that state what they like.
    #[derive(Default)]
    struct BitWriter {
        bits: Vec<bool>,
    }

    impl BitWriter {
        fn u(&mut self, n: u32, v: u64) -> &mut Self {
            for i in (0..n).rev() {
                self.bits.push((v >> i) & 1 == 1);
            }
            self
        }
        fn ue(&mut self, v: u64) -> &mut Self {
            let x = v + 1;
            let len = 64 - x.leading_zeros();
            self.u(len - 1, 0).u(len, x)
        }
        fn se(&mut self, v: i64) -> &mut Self {
            self.ue(if v > 0 { 2 * v as u64 - 1 } else { 2 * v.unsigned_abs() })
        }
        fn nal(&mut self, header: &[u8]) -> Vec<u8> {
            self.u(1, 1);
            while !self.bits.len().is_multiple_of(8) {
                self.bits.push(false);
            }
            let mut out = header.to_vec();
            out.extend(self.bits.chunks(8).map(|c| c.iter().fold(0u8, |a, &b| a << 1 | u8::from(b))));
            out
        }
    }

    /// A baseline H.264 SPS with the given width field and POC LSB field.
    fn h264_sps(w_mbs_minus1: u64, log2_poc_lsb_minus4: u64, crop: Option<u64>) -> Vec<u8> {
        let mut b = BitWriter::default();
        b.u(8, 66).u(16, 30).ue(0).ue(0).ue(0).ue(log2_poc_lsb_minus4).ue(1).u(1, 0).ue(w_mbs_minus1).ue(8).u(1, 1).u(1, 1);
        match crop {
            Some(c) => b.u(1, 1).ue(c).ue(c).ue(0).ue(0),
            None => b.u(1, 0),
        };
        b.u(1, 0).nal(&[0x67])
    }

    fn config(sps: &[u8]) -> Vec<u8> {
        [&[0, 0, 0, 1][..], sps, &[0, 0, 0, 1, 0x68, 0xce, 0x38, 0x80]].concat()
    }

    #[test]
    fn a_well_formed_sps_gives_its_picture_size() {
        let d = sample_description(Codec::H264, &config(&h264_sps(19, 0, None))).expect("parses");
        assert_eq!((d.width, d.height), (320, 144));
    }

    /// Fields at the top of their exp-Golomb range overflowed the size arithmetic (a panic
    /// in a checked build, a wrapped size in a release one); they are refused.
    #[test]
    fn an_sps_whose_sizes_overflow_is_refused() {
        let max = u64::from(u32::MAX) - 1;
        for sps in [h264_sps(max, 0, None), h264_sps(max - 1, 0, None), h264_sps(19, 0, Some(max))] {
            assert!(sample_description(Codec::H264, &config(&sps)).is_err());
        }
        // A size that fits the arithmetic but not the sample description's 16 bits.
        let e = sample_description(Codec::H264, &config(&h264_sps(5000, 0, None))).err().expect("refused");
        assert!(e.contains("80016x144"), "{e}");
    }

    /// `log2_max_pic_order_cnt_lsb_minus4` beyond its range (0..=12) shifted past 64 bits when
    /// ordering pictures; such a stream keeps decode order.
    #[test]
    fn a_poc_field_beyond_its_range_keeps_decode_order() {
        let sps = h264_sps(19, 60, None);
        let mut slice = BitWriter::default();
        let idr = slice.ue(0).ue(7).ue(0).u(4, 0).ue(0).u(64, 0).nal(&[0x65]);
        let aus: Vec<AccessUnit> = (0..3).map(|_| AccessUnit { data: [&[0, 0, 0, 1][..], &idr].concat(), key: true }).collect();
        assert_eq!(presentation_order(Codec::H264, &config(&sps), &aus), vec![0, 1, 2]);
    }

    /// A scaling-list delta outside -128..=127 overflowed the running sum.
    #[test]
    fn a_scaling_list_delta_beyond_its_range_is_refused() {
        let mut b = BitWriter::default();
        // High profile: chroma 1, bit depths 0, no bypass, scaling matrix present, list 0 present.
        b.u(8, 100).u(16, 30).ue(0).ue(1).ue(0).ue(0).u(1, 0).u(1, 1).u(1, 1).se(i64::from(i32::MAX));
        let sps = b.u(64, 0).nal(&[0x67]);
        assert!(sample_description(Codec::H264, &config(&sps)).is_err());
    }
}
