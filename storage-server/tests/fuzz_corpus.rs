//! Every fuzz target (`camvault_server::fuzz::TARGETS`) on the stable toolchain: its seed
//! corpus in `fuzz/corpus/<target>/`, the inputs that once broke it (`regression-*` there),
//! and seeded mutations of each, as `cargo fuzz` would start from. A panic, an overflow (tests
//! build with overflow checks) or an allocation the input merely claims fails the test.
//!
//! `CAMVAULT_FUZZ_WRITE_SEEDS=1 cargo test -p camvault-server --test fuzz_corpus -- --ignored`
//! rewrites the generated seeds after a format change.

use std::path::{Path, PathBuf};

use camvault_server::fuzz::TARGETS;
use camvault_server::proto;
use prost::Message;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.expect("dir entry").path()).collect();
    files.sort();
    files.into_iter().map(|p| (p.file_name().expect("name").to_string_lossy().into_owned(), std::fs::read(&p).expect("read"))).collect()
}

/// xorshift64*: the same mutations on every run, so a failure names an input that repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of the kinds libFuzzer starts with: bit flips, boundary values written over
/// lengths and counts, truncation, duplicated and deleted runs.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.len() < 2 {
            b.push(rng.next() as u8);
            continue;
        }
        // Byte 0 is the fix-up flag of the store-file targets: keep it mostly as seeded.
        let at = 1 + rng.below(b.len() - 1);
        match rng.below(7) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)],
            2 => {
                let v: [u8; 8] = [u64::MAX, 0, 1 << 31, u64::from(u32::MAX), 1 << 63, 0x7fff_ffff_ffff_ffff][rng.below(6)].to_be_bytes();
                let n = [4, 8][rng.below(2)].min(b.len() - at);
                let off = if rng.below(2) == 0 { 8 - n } else { 0 };
                b[at..at + n].copy_from_slice(&v[off..off + n]);
            }
            3 => b.truncate(at),
            4 => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                let run = b[at..end].to_vec();
                b.splice(at..at, run);
            }
            5 => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                b.drain(at..end);
            }
            _ => b[0] ^= 1,
        }
    }
    b
}

/// Mutations per seed: enough to reach every length field of the seeds; the whole test stays
/// within tens of seconds.
const MUTATIONS_PER_SEED: usize = 300;

#[test]
fn every_target_has_a_seed_corpus() {
    for (name, _) in TARGETS {
        let seeds = corpus(name);
        assert!(seeds.iter().any(|(f, b)| !f.starts_with("regression-") && b.len() > 1), "fuzz/corpus/{name} has no seed");
    }
    let dirs: Vec<String> =
        std::fs::read_dir(corpus_dir("")).expect("corpus").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
    for d in &dirs {
        assert!(TARGETS.iter().any(|(n, _)| n == d), "fuzz/corpus/{d} belongs to no target");
    }
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    let mut failed = Vec::new();
    for (i, (name, target)) in TARGETS.iter().enumerate() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
        'seeds: for (file, seed) in corpus(name) {
            for m in 0..=MUTATIONS_PER_SEED {
                // Input 0 is the seed itself.
                let input = if m == 0 { seed.clone() } else { mutate(&mut rng, &seed) };
                if std::panic::catch_unwind(|| target(&input)).is_err() {
                    let path = std::env::temp_dir().join(format!("camvault-fuzz-{name}-{file}-{m}"));
                    std::fs::write(&path, &input).expect("write the failing input");
                    failed.push(format!("{name}: input {m} from {file}, kept in {}", path.display()));
                    continue 'seeds;
                }
            }
        }
    }
    assert!(failed.is_empty(), "targets panicked:\n{}", failed.join("\n"));
}

fn write_seed(target: &str, file: &str, bytes: &[u8]) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(file), bytes).expect("write seed");
}

/// The seeds made from real files and messages. Run by hand after a format change.
#[test]
#[ignore = "rewrites fuzz/corpus; run with CAMVAULT_FUZZ_WRITE_SEEDS=1"]
fn write_generated_seeds() {
    if std::env::var_os("CAMVAULT_FUZZ_WRITE_SEEDS").is_none() {
        return;
    }
    use camvault_server::fuzz::StoreFile;
    for kind in StoreFile::ALL {
        let mut s = camvault_server::fuzz::seed(kind);
        write_seed(kind.name(), "seed-as-written", &s);
        s[0] = 1;
        write_seed(kind.name(), "seed-fix-crcs", &s);
    }
    // Parameter sets and access units of the two MP4 seeds.
    for (file, codec_byte) in [("h264.mp4", 0u8), ("h265.mp4", 1)] {
        let mp4 = std::fs::read(corpus_dir("mp4_demux").join(file)).expect("mp4 seed");
        let track = camvault_server::mp4_in::read(&mp4).expect("the seed demuxes");
        let mut s = vec![codec_byte];
        s.extend_from_slice(&track.config);
        for sample in track.samples.iter().take(3) {
            s.extend_from_slice(&sample.data);
        }
        write_seed("parameter_sets", &format!("seed-{file}.annexb"), &s);
    }
    // A publish call: open, three frames, in DATA frames of 7 bytes (the first byte).
    let open = proto::PublishRequest {
        msg: Some(proto::publish_request::Msg::Open(proto::OpenStream {
            camera: "cam-1".into(),
            codec: Some(proto::CodecConfig {
                codec: proto::Codec::H264 as i32,
                config: vec![0, 0, 0, 1, 0x67, 1, 2, 3, 0, 0, 0, 1, 0x68, 4],
            }),
            backfill: false,
        })),
    };
    let frame = |n: i64| proto::PublishRequest {
        msg: Some(proto::publish_request::Msg::Frame(proto::Frame {
            ts_us: 1_767_225_600_000_000 + n * 40_000,
            pts_90k: Some(n * 3600),
            key: n == 0,
            payload: vec![0, 0, 0, 1, 0x65, n as u8].into(),
        })),
    };
    let mut wire = vec![7u8];
    for m in [open, frame(0), frame(1), frame(2)] {
        wire.push(0);
        wire.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
        m.encode(&mut wire).expect("encode");
    }
    write_seed("publish_framing", "seed-open-and-frames", &wire);
    for (i, t) in ["2026-11-23T08:00:00Z", "2026-11-23T15:00:00+07:00", "-1h", "+30m", "90 minutes ago", "now", "2h30m", "PT1H", "7d"]
        .iter()
        .enumerate()
    {
        write_seed("cli_time", &format!("seed-{i}"), t.as_bytes());
    }
    write_seed("config_file", "seed-sample.toml", include_bytes!("../../camvault.toml"));
    write_seed(
        "config_file",
        "seed-pkcs11.toml",
        b"data_dir = \"/d\"\nkey_dir = \"/k\"\n[kek]\nprovider = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\npin_env = \"P\"\n",
    );
}
