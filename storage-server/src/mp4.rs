//! A fragmented MP4 (ISO/IEC 14496-12) writer for H.264 and H.265: `ftyp` + `moov` (with
//! `mvex`), then one `moof` + `mdat` per fragment. Memory is one fragment, whatever the clip's
//! length. Our own box writer: the `mp4` crate writes no usable `hvcC` and no fragments.

use crate::h26x::SampleDescription;

/// 90 kHz, the video clock of MPEG systems.
pub const TIMESCALE: u32 = 90_000;
/// A fragment is cut at the next key frame, or earlier when it reaches this size, so that memory
/// stays bounded even with very long GOPs.
pub const FRAGMENT_BYTES_MAX: usize = 8 << 20;

fn boxed(out: &mut Vec<u8>, typ: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(typ);
    body(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

fn full(out: &mut Vec<u8>, typ: &[u8; 4], version: u8, flags: u32, body: impl FnOnce(&mut Vec<u8>)) {
    boxed(out, typ, |o| {
        o.push(version);
        o.extend_from_slice(&flags.to_be_bytes()[1..]);
        body(o);
    });
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// `ftyp` and `moov` for one video track.
pub fn init_segment(desc: &SampleDescription) -> Vec<u8> {
    let mut o = Vec::with_capacity(1024);
    boxed(&mut o, b"ftyp", |o| {
        o.extend_from_slice(b"isom");
        o.extend_from_slice(&0x200u32.to_be_bytes());
        for brand in [b"isom", b"iso6", b"mp41", if &desc.fourcc == b"avc1" { b"avc1" } else { b"hvc1" }] {
            o.extend_from_slice(brand);
        }
    });
    boxed(&mut o, b"moov", |o| {
        full(o, b"mvhd", 0, 0, |o| {
            o.extend_from_slice(&[0; 8]); // creation, modification
            o.extend_from_slice(&1000u32.to_be_bytes());
            o.extend_from_slice(&0u32.to_be_bytes()); // duration: in the fragments
            o.extend_from_slice(&0x0001_0000u32.to_be_bytes());
            o.extend_from_slice(&0x0100u16.to_be_bytes());
            o.extend_from_slice(&[0; 10]);
            MATRIX.iter().for_each(|m| o.extend_from_slice(&m.to_be_bytes()));
            o.extend_from_slice(&[0; 24]);
            o.extend_from_slice(&2u32.to_be_bytes());
        });
        boxed(o, b"trak", |o| {
            full(o, b"tkhd", 0, 3, |o| {
                o.extend_from_slice(&[0; 8]);
                o.extend_from_slice(&1u32.to_be_bytes());
                o.extend_from_slice(&[0; 4]);
                o.extend_from_slice(&0u32.to_be_bytes());
                o.extend_from_slice(&[0; 8]);
                o.extend_from_slice(&[0; 4]); // layer, alternate group
                o.extend_from_slice(&[0; 4]); // volume, reserved
                MATRIX.iter().for_each(|m| o.extend_from_slice(&m.to_be_bytes()));
                o.extend_from_slice(&(u32::from(desc.width) << 16).to_be_bytes());
                o.extend_from_slice(&(u32::from(desc.height) << 16).to_be_bytes());
            });
            boxed(o, b"mdia", |o| {
                full(o, b"mdhd", 0, 0, |o| {
                    o.extend_from_slice(&[0; 8]);
                    o.extend_from_slice(&TIMESCALE.to_be_bytes());
                    o.extend_from_slice(&0u32.to_be_bytes());
                    o.extend_from_slice(&0x55c4u16.to_be_bytes()); // "und"
                    o.extend_from_slice(&[0; 2]);
                });
                full(o, b"hdlr", 0, 0, |o| {
                    o.extend_from_slice(&[0; 4]);
                    o.extend_from_slice(b"vide");
                    o.extend_from_slice(&[0; 12]);
                    o.extend_from_slice(b"camvault video\0");
                });
                boxed(o, b"minf", |o| {
                    full(o, b"vmhd", 0, 1, |o| o.extend_from_slice(&[0; 8]));
                    boxed(o, b"dinf", |o| {
                        full(o, b"dref", 0, 0, |o| {
                            o.extend_from_slice(&1u32.to_be_bytes());
                            full(o, b"url ", 0, 1, |_| {});
                        });
                    });
                    boxed(o, b"stbl", |o| {
                        full(o, b"stsd", 0, 0, |o| {
                            o.extend_from_slice(&1u32.to_be_bytes());
                            boxed(o, &desc.fourcc, |o| {
                                o.extend_from_slice(&[0; 6]);
                                o.extend_from_slice(&1u16.to_be_bytes());
                                o.extend_from_slice(&[0; 16]);
                                o.extend_from_slice(&desc.width.to_be_bytes());
                                o.extend_from_slice(&desc.height.to_be_bytes());
                                o.extend_from_slice(&0x0048_0000u32.to_be_bytes());
                                o.extend_from_slice(&0x0048_0000u32.to_be_bytes());
                                o.extend_from_slice(&[0; 4]);
                                o.extend_from_slice(&1u16.to_be_bytes());
                                o.extend_from_slice(&[0; 32]);
                                o.extend_from_slice(&0x0018u16.to_be_bytes());
                                o.extend_from_slice(&0xffffu16.to_be_bytes());
                                boxed(o, &desc.config_box, |o| o.extend_from_slice(&desc.config));
                            });
                        });
                        for t in [b"stts", b"stsc", b"stco"] {
                            full(o, t, 0, 0, |o| o.extend_from_slice(&0u32.to_be_bytes()));
                        }
                        full(o, b"stsz", 0, 0, |o| o.extend_from_slice(&[0; 8]));
                    });
                });
            });
        });
        boxed(o, b"mvex", |o| {
            full(o, b"trex", 0, 0, |o| {
                o.extend_from_slice(&1u32.to_be_bytes());
                o.extend_from_slice(&1u32.to_be_bytes());
                o.extend_from_slice(&[0; 12]);
            });
        });
    });
    o
}

/// One sample of a fragment.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Bytes of the sample in the fragment's `mdat`.
    pub size: u32,
    /// Duration, 90 kHz ticks.
    pub duration: u32,
    /// Sync sample (key frame).
    pub key: bool,
    /// Presentation minus decode time, in 90 kHz ticks.
    pub cto: i32,
}

/// `moof` + `mdat` for samples whose data (length-prefixed NAL units) is `data`.
pub fn fragment(sequence: u32, base_decode_time: u64, samples: &[Sample], data: &[u8]) -> Vec<u8> {
    let mut o = fragment_header(sequence, base_decode_time, samples, data.len());
    o.extend_from_slice(data);
    o
}

/// `moof` and the `mdat` header of a fragment whose `mdat` data is `data_bytes` long: the
/// export sends the data after it as it is, without copying it behind the header.
pub fn fragment_header(sequence: u32, base_decode_time: u64, samples: &[Sample], data_bytes: usize) -> Vec<u8> {
    let mut o = Vec::with_capacity(64 + samples.len() * 16);
    let mut data_offset_at = 0;
    boxed(&mut o, b"moof", |o| {
        full(o, b"mfhd", 0, 0, |o| o.extend_from_slice(&sequence.to_be_bytes()));
        boxed(o, b"traf", |o| {
            // default-base-is-moof
            full(o, b"tfhd", 0, 0x02_0000, |o| o.extend_from_slice(&1u32.to_be_bytes()));
            full(o, b"tfdt", 1, 0, |o| o.extend_from_slice(&base_decode_time.to_be_bytes()));
            // data-offset, duration, size, flags, composition offset (signed: version 1)
            full(o, b"trun", 1, 0x0001 | 0x0100 | 0x0200 | 0x0400 | 0x0800, |o| {
                o.extend_from_slice(&(samples.len() as u32).to_be_bytes());
                data_offset_at = o.len();
                o.extend_from_slice(&0u32.to_be_bytes());
                for s in samples {
                    o.extend_from_slice(&s.duration.to_be_bytes());
                    o.extend_from_slice(&s.size.to_be_bytes());
                    let flags: u32 = if s.key { 0x0200_0000 } else { 0x0101_0000 };
                    o.extend_from_slice(&flags.to_be_bytes());
                    o.extend_from_slice(&s.cto.to_be_bytes());
                }
            });
        });
    });
    let offset = (o.len() + 8) as u32;
    o[data_offset_at..data_offset_at + 4].copy_from_slice(&offset.to_be_bytes());
    o.extend_from_slice(&((data_bytes + 8) as u32).to_be_bytes());
    o.extend_from_slice(b"mdat");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_followed_by_its_data_is_the_whole_fragment() {
        let samples = [Sample { size: 7, duration: 3600, key: true, cto: 0 }, Sample { size: 5, duration: 3600, key: false, cto: 3600 }];
        let data: Vec<u8> = (1..=12).collect();
        let whole = fragment(9, 90_000, &samples, &data);
        let header = fragment_header(9, 90_000, &samples, data.len());
        assert_eq!([header.as_slice(), &data].concat(), whole);
        // The mdat box covers exactly the data, and trun's data offset points at its first byte.
        let mdat = header.len() - 8;
        assert_eq!(&header[mdat + 4..], b"mdat");
        assert_eq!(u32::from_be_bytes(header[mdat..mdat + 4].try_into().expect("4 bytes")) as usize, data.len() + 8);
        let moof = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        assert_eq!(moof, mdat);
        let trun = header.windows(4).position(|w| w == b"trun").expect("a trun box");
        // trun: type, version+flags, sample count, then the data offset from the start of moof.
        let data_offset = u32::from_be_bytes(header[trun + 12..trun + 16].try_into().expect("4 bytes")) as usize;
        assert_eq!(&whole[data_offset..data_offset + data.len()], data.as_slice());
    }
}
