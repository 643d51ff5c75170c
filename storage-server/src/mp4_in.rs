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

/// Child boxes of `b`: (type, body). A box whose stated size runs past its parent ends the
/// list (sizes are 64-bit in the file: checked, never wrapped).
fn children(b: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i + 8 <= b.len() {
        let Some(size) = be32(b, i) else { break };
        let typ: [u8; 4] = b[i + 4..i + 8].try_into().unwrap_or([0; 4]);
        let (hdr, size) = match size {
            1 => match be64(b, i + 8) {
                Some(s) => (16usize, s),
                None => break,
            },
            0 => (8, (b.len() - i) as u64),
            s => (8, u64::from(s)),
        };
        let Some(end) = usize::try_from(size).ok().and_then(|s| i.checked_add(s)) else { break };
        if (size as usize) < hdr || end > b.len() {
            break;
        }
        out.push((typ, &b[i + hdr..end]));
        i = end;
    }
    out
}

/// The entries of a full box's table: the count it states (at `count_at`), but never more than
/// the box holds at `entry_bytes` each, so a count in the file cannot drive a loop or an
/// allocation past the file's own size.
fn table_len(table: &[u8], count_at: usize, entry_bytes: usize) -> usize {
    let stated = be32(table, count_at).unwrap_or(0) as usize;
    stated.min(table.len().saturating_sub(count_at + 4) / entry_bytes)
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
        // Every sample lies in the file: a count the file cannot hold is refused before
        // anything is allocated for it.
        if uniform == 0 && count > table_len(stsz, 8, 4) {
            return Err(format!("stsz lists {count} sample sizes but holds {}", table_len(stsz, 8, 4)));
        }
        if uniform != 0 && (count as u64).saturating_mul(u64::from(uniform)) > file.len() as u64 {
            return Err(format!("stsz states {count} samples of {uniform} bytes, more than the file's {} bytes", file.len()));
        }
        let sizes: Vec<u32> = (0..count)
            .map(|i| if uniform != 0 { Some(uniform) } else { be32(stsz, 12 + 4 * i) })
            .collect::<Option<_>>()
            .ok_or("short stsz")?;
        let chunks: Vec<u64> = if let Some(stco) = table(b"stco") {
            (0..table_len(stco, 4, 4)).filter_map(|i| be32(stco, 8 + 4 * i).map(u64::from)).collect()
        } else {
            let co64 = table(b"co64").ok_or("no stco/co64")?;
            (0..table_len(co64, 4, 8)).filter_map(|i| be64(co64, 8 + 8 * i)).collect()
        };
        let stsc = table(b"stsc").ok_or("no stsc")?;
        let runs: Vec<(u32, u32)> =
            (0..table_len(stsc, 4, 12)).filter_map(|i| Some((be32(stsc, 8 + 12 * i)?, be32(stsc, 12 + 12 * i)?))).collect();
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
                off = off.checked_add(u64::from(sizes[offsets.len() - 1])).ok_or("a chunk runs past 2^64 bytes")?;
            }
            if offsets.len() == count {
                break;
            }
        }
        let stts = table(b"stts").ok_or("no stts")?;
        let mut durations = Vec::with_capacity(count);
        for i in 0..table_len(stts, 4, 8) {
            let (n, d) = (be32(stts, 8 + 8 * i).unwrap_or(0), be32(stts, 12 + 8 * i).unwrap_or(0));
            durations.extend(std::iter::repeat_n(d, (n as usize).min(count - durations.len())));
        }
        let mut ctts_v = vec![0i64; count];
        if let Some(ctts) = table(b"ctts") {
            let mut k = 0;
            for i in 0..table_len(ctts, 4, 8) {
                let (n, o) = (be32(ctts, 8 + 8 * i).unwrap_or(0), be32(ctts, 12 + 8 * i).unwrap_or(0) as i32);
                for v in ctts_v.iter_mut().skip(k).take(n as usize) {
                    *v = i64::from(o);
                }
                k = k.saturating_add(n as usize).min(count);
            }
        }
        let sync: Option<Vec<u32>> = table(b"stss").map(|s| (0..table_len(s, 4, 4)).filter_map(|i| be32(s, 8 + 4 * i)).collect());
        let mut samples = Vec::with_capacity(count.min(offsets.len()));
        let mut dts = 0i64;
        for i in 0..count.min(offsets.len()) {
            let n = sizes[i] as usize;
            let raw =
                usize::try_from(offsets[i]).ok().and_then(|o| file.get(o..o.checked_add(n)?)).ok_or("a sample lies outside the file")?;
            let mut data = Vec::with_capacity(n + 16);
            let mut j = 0usize;
            while j + 4 <= raw.len() {
                let l = be32(raw, j).unwrap_or(0) as usize;
                let nal = raw.get(j + 4..j + 4 + l).ok_or("a NAL unit overruns its sample")?;
                data.extend_from_slice(&[0, 0, 0, 1]);
                data.extend_from_slice(nal);
                j += 4 + l;
            }
            let key = sync.as_ref().is_none_or(|s| s.binary_search(&(i as u32 + 1)).is_ok());
            samples.push(Mp4Sample { data, key, dts, pts: dts.saturating_add(ctts_v[i]) });
            dts = dts.saturating_add(i64::from(durations.get(i).copied().unwrap_or(0)));
        }
        return Ok(Mp4Track { codec, config, timescale, samples });
    }
    Err("no H.264 or H.265 video track".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Vec<u8> {
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/mp4_demux/h264.mp4")).expect("the H.264 seed")
    }

    fn find_box(file: &[u8], fourcc: &[u8; 4]) -> usize {
        file.windows(4).position(|w| w == fourcc).expect("box") - 4
    }

    #[test]
    fn the_seed_demuxes() {
        let t = read(&seed()).expect("demux");
        assert_eq!((t.codec, t.samples.len()), (Codec::H264, 6));
        assert!(t.samples[0].key && t.samples[0].data.starts_with(&[0, 0, 0, 1]));
    }

    /// A box with a 64-bit `largesize` that wraps the offset sum ends the box list; it was an
    /// overflow (a panic in a checked build, a wrong slice in a release one).
    #[test]
    fn a_64_bit_largesize_that_wraps_ends_the_box_list() {
        for largesize in [u64::MAX, u64::MAX - 7, 1 << 63] {
            let mut b = vec![0, 0, 0, 1];
            b.extend_from_slice(b"moov");
            b.extend_from_slice(&largesize.to_be_bytes());
            b.extend_from_slice(&[0; 16]);
            assert!(children(&b).is_empty());
            assert!(read(&b).is_err());
        }
    }

    /// A sample count the file cannot hold is refused before anything is allocated for it
    /// (it was `Vec::with_capacity(count)` and a loop of `count` rounds: 4 billion samples
    /// stated in a 3 KiB file).
    #[test]
    fn a_sample_count_the_file_cannot_hold_is_refused_before_allocating() {
        let mut f = seed();
        let stsz = find_box(&f, b"stsz");
        // Full box header (4), sample_size, sample_count.
        f[stsz + 12..stsz + 16].copy_from_slice(&1u32.to_be_bytes());
        f[stsz + 16..stsz + 20].copy_from_slice(&u32::MAX.to_be_bytes());
        let e = read(&f).err().expect("refused");
        assert!(e.contains("stsz"), "{e}");
        // Listed sizes: the count is more than the table holds.
        let mut f = seed();
        f[stsz + 16..stsz + 20].copy_from_slice(&u32::MAX.to_be_bytes());
        let e = read(&f).err().expect("refused");
        assert!(e.contains("stsz lists"), "{e}");
    }

    /// Time-to-sample and composition runs of 4 billion samples each fill only the samples
    /// there are.
    #[test]
    fn run_lengths_past_the_sample_count_are_cut_at_it() {
        let mut f = seed();
        let stts = find_box(&f, b"stts");
        f[stts + 16..stts + 20].copy_from_slice(&u32::MAX.to_be_bytes());
        let t = read(&f).expect("demux");
        assert_eq!(t.samples.len(), 6);
    }
}
