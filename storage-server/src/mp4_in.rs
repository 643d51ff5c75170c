//! Reading a (non-fragmented) MP4's video track for `camvault ingest FILE.mp4`: the parameter
//! sets from `avcC`/`hvcC` and each sample as an Annex B access unit with its decode and
//! presentation times.

use storage_core::Codec;

/// A sample in decode order.
pub struct Mp4Sample {
    /// The sample, converted to Annex B.
    pub data: Vec<u8>,
    /// Sync sample (key frame).
    pub key: bool,
    /// Decode time in the track's timescale.
    pub dts: i64,
    /// Presentation time in the track's timescale.
    pub pts: i64,
}

/// The video track of an MP4 file.
pub struct Mp4Track {
    /// H.264 or H.265.
    pub codec: Codec,
    /// Parameter sets as Annex B NAL units.
    pub config: Vec<u8>,
    /// Ticks per second of `dts` and `pts`.
    pub timescale: u32,
    /// Samples in decode order.
    pub samples: Vec<Mp4Sample>,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Child boxes of `b`: (type, body).
fn children(b: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 8 <= b.len() {
        let Some(size) = be32(b, i) else { break };
        let typ: [u8; 4] = b[i + 4..i + 8].try_into().unwrap_or([0; 4]);
        let (hdr, size) = match size {
            1 => match be64(b, i + 8) {
                Some(s) => (16, s as usize),
                None => break,
            },
            0 => (8, b.len() - i),
            s => (8, s as usize),
        };
        if size < hdr || i + size > b.len() {
            break;
        }
        out.push((typ, &b[i + hdr..i + size]));
        i += size;
    }
    out
}

fn find<'a>(b: &'a [u8], path: &[&[u8; 4]]) -> Option<&'a [u8]> {
    let mut cur = b;
    for t in path {
        cur = children(cur).into_iter().find(|(ty, _)| ty == *t)?.1;
    }
    Some(cur)
}

fn annexb_from_config(codec: Codec, c: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut push = |n: &[u8]| {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(n);
    };
    match codec {
        Codec::H264 => {
            let mut i = 5;
            let nsps = *c.get(i)? & 0x1f;
            i += 1;
            for _ in 0..nsps {
                let l = u16::from_be_bytes(c.get(i..i + 2)?.try_into().ok()?) as usize;
                push(c.get(i + 2..i + 2 + l)?);
                i += 2 + l;
            }
            let npps = *c.get(i)?;
            i += 1;
            for _ in 0..npps {
                let l = u16::from_be_bytes(c.get(i..i + 2)?.try_into().ok()?) as usize;
                push(c.get(i + 2..i + 2 + l)?);
                i += 2 + l;
            }
        }
        _ => {
            let mut i = 22;
            let arrays = *c.get(i)?;
            i += 1;
            for _ in 0..arrays {
                i += 1;
                let n = u16::from_be_bytes(c.get(i..i + 2)?.try_into().ok()?);
                i += 2;
                for _ in 0..n {
                    let l = u16::from_be_bytes(c.get(i..i + 2)?.try_into().ok()?) as usize;
                    push(c.get(i + 2..i + 2 + l)?);
                    i += 2 + l;
                }
            }
        }
    }
    Some(out)
}

/// Parses the first H.264/H.265 video track of `file`.
pub fn read(file: &[u8]) -> Result<Mp4Track, String> {
    let moov = find(file, &[b"moov"]).ok_or("no moov box (fragmented or not an MP4)")?;
    for (t, trak) in children(moov) {
        if &t != b"trak" {
            continue;
        }
        let Some(stbl) = find(trak, &[b"mdia", b"minf", b"stbl"]) else { continue };
        let Some(stsd) = find(stbl, &[b"stsd"]) else { continue };
        let Some((entry_type, entry)) = children(stsd.get(8..).unwrap_or_default()).into_iter().next() else { continue };
        let (codec, cfg_box) = match &entry_type {
            b"avc1" | b"avc3" => (Codec::H264, b"avcC"),
            b"hvc1" | b"hev1" => (Codec::H265, b"hvcC"),
            _ => continue,
        };
        let cfg =
            children(entry.get(78..).unwrap_or_default()).into_iter().find(|(t, _)| t == cfg_box).ok_or("no decoder configuration")?.1;
        let config = annexb_from_config(codec, cfg).ok_or("the decoder configuration does not parse")?;
        let mdhd = find(trak, &[b"mdia", b"mdhd"]).ok_or("no mdhd")?;
        let timescale = if mdhd.first() == Some(&1) { be32(mdhd, 20) } else { be32(mdhd, 12) }.ok_or("bad mdhd")?;
        let table = |t: &[u8; 4]| find(stbl, &[t]);
        let stsz = table(b"stsz").ok_or("no stsz")?;
        let uniform = be32(stsz, 4).ok_or("bad stsz")?;
        let count = be32(stsz, 8).ok_or("bad stsz")? as usize;
        let sizes: Vec<u32> = (0..count)
            .map(|i| if uniform != 0 { Some(uniform) } else { be32(stsz, 12 + 4 * i) })
            .collect::<Option<_>>()
            .ok_or("short stsz")?;
        let chunks: Vec<u64> = if let Some(stco) = table(b"stco") {
            (0..be32(stco, 4).unwrap_or(0) as usize).filter_map(|i| be32(stco, 8 + 4 * i).map(u64::from)).collect()
        } else {
            let co64 = table(b"co64").ok_or("no stco/co64")?;
            (0..be32(co64, 4).unwrap_or(0) as usize).filter_map(|i| be64(co64, 8 + 8 * i)).collect()
        };
        let stsc = table(b"stsc").ok_or("no stsc")?;
        let stsc_n = be32(stsc, 4).unwrap_or(0) as usize;
        let runs: Vec<(u32, u32)> = (0..stsc_n).filter_map(|i| Some((be32(stsc, 8 + 12 * i)?, be32(stsc, 12 + 12 * i)?))).collect();
        // Sample offsets from chunks.
        let mut offsets = Vec::with_capacity(count);
        for (ci, &chunk_off) in chunks.iter().enumerate() {
            let per = runs.iter().rev().find(|(first, _)| *first as usize <= ci + 1).map_or(0, |r| r.1);
            let mut off = chunk_off;
            for _ in 0..per {
                if offsets.len() == count {
                    break;
                }
                offsets.push(off);
                off += u64::from(sizes[offsets.len() - 1]);
            }
        }
        let stts = table(b"stts").ok_or("no stts")?;
        let mut durations = Vec::with_capacity(count);
        for i in 0..be32(stts, 4).unwrap_or(0) as usize {
            let (n, d) = (be32(stts, 8 + 8 * i).unwrap_or(0), be32(stts, 12 + 8 * i).unwrap_or(0));
            durations.extend(std::iter::repeat_n(d, n as usize));
        }
        let mut ctts_v = vec![0i64; count];
        if let Some(ctts) = table(b"ctts") {
            let mut k = 0;
            for i in 0..be32(ctts, 4).unwrap_or(0) as usize {
                let (n, o) = (be32(ctts, 8 + 8 * i).unwrap_or(0), be32(ctts, 12 + 8 * i).unwrap_or(0) as i32);
                for _ in 0..n {
                    if k < count {
                        ctts_v[k] = i64::from(o);
                        k += 1;
                    }
                }
            }
        }
        let sync: Option<Vec<u32>> =
            table(b"stss").map(|s| (0..be32(s, 4).unwrap_or(0) as usize).filter_map(|i| be32(s, 8 + 4 * i)).collect());
        let mut samples = Vec::with_capacity(count);
        let mut dts = 0i64;
        for i in 0..count.min(offsets.len()) {
            let (o, n) = (offsets[i] as usize, sizes[i] as usize);
            let raw = file.get(o..o + n).ok_or("a sample lies outside the file")?;
            let mut data = Vec::with_capacity(n + 16);
            let mut j = 0;
            while j + 4 <= raw.len() {
                let l = be32(raw, j).unwrap_or(0) as usize;
                let nal = raw.get(j + 4..j + 4 + l).ok_or("a NAL unit overruns its sample")?;
                data.extend_from_slice(&[0, 0, 0, 1]);
                data.extend_from_slice(nal);
                j += 4 + l;
            }
            let key = sync.as_ref().is_none_or(|s| s.binary_search(&(i as u32 + 1)).is_ok());
            samples.push(Mp4Sample { data, key, dts, pts: dts + ctts_v[i] });
            dts += i64::from(durations.get(i).copied().unwrap_or(0));
        }
        return Ok(Mp4Track { codec, config, timescale, samples });
    }
    Err("no H.264 or H.265 video track".into())
}
