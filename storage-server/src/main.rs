//! `camvault`: the operator's command over storage-core.
//!
//! Until the gRPC server lands this is a local tool over a data directory:
//!
//! ```text
//! camvault serve      [--data DIR]          open the store, run group commit and recovery, report status
//! camvault demo       [--data DIR] [--cameras N] [--seconds S]   write synthetic camera streams
//! camvault cameras    [--data DIR]
//! camvault recordings [--data DIR] --camera ID [--from RFC3339] [--to RFC3339]
//! camvault scrub      [--data DIR]
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::unwrap_used)]

mod time;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use storage_core::{Clock, Codec, FrameIn, Store, StoreConfig};

struct Args {
    verb: String,
    rest: Vec<String>,
}

impl Args {
    fn value(&self, name: &str) -> Option<&str> {
        self.rest.iter().position(|a| a == name).and_then(|i| self.rest.get(i + 1)).map(String::as_str)
    }

    fn data(&self) -> PathBuf {
        self.value("--data").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("./camvault-data"))
    }

    fn number(&self, name: &str, default: u64) -> Result<u64, String> {
        self.value(name).map_or(Ok(default), |v| v.parse().map_err(|_| format!("{name} takes a number, not {v:?}")))
    }
}

const USAGE: &str = "usage: camvault <serve|demo|cameras|recordings|scrub> [--data DIR] [options]\n\
  serve                          open the store (recovering it), run group commit, print status until stopped\n\
  demo [--cameras N] [--seconds S]   write N synthetic 4 Mbit/s camera streams of S seconds\n\
  cameras                        list cameras with recordings\n\
  recordings --camera ID [--from T] [--to T]   recorded spans and gaps (T: RFC 3339)\n\
  scrub                          check every sealed segment's records and footer";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let mut argv = std::env::args().skip(1);
    let Some(verb) = argv.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let args = Args { verb, rest: argv.collect() };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("camvault {}: {e}", args.verb);
            ExitCode::FAILURE
        }
    }
}

fn open(args: &Args) -> Result<Store, String> {
    let data = args.data();
    Store::open(StoreConfig::new(&data)).map_err(|e| format!("cannot open the store in {}: {e}", data.display()))
}

fn run(args: &Args) -> Result<(), String> {
    match args.verb.as_str() {
        "serve" => serve(args),
        "demo" => demo(args),
        "cameras" => {
            for c in open(args)?.cameras() {
                println!("{c}");
            }
            Ok(())
        }
        "recordings" => recordings(args),
        "scrub" => {
            let store = open(args)?;
            let found = store.scrub().map_err(|e| e.to_string())?;
            for r in &found {
                println!("CORRUPT {} offset {:?}: {}", r.path.display(), r.offset, r.detail);
            }
            println!("{} damaged segment(s)", found.len());
            if found.is_empty() {
                Ok(())
            } else {
                Err("damage found".into())
            }
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

fn serve(args: &Args) -> Result<(), String> {
    let store = open(args)?;
    let cams = store.cameras();
    tracing::info!(data = %args.data().display(), cameras = cams.len(), "store open; group commit every 1 s; stop with Ctrl-C");
    let once = args.rest.iter().any(|a| a == "--once");
    loop {
        let m = store.metrics();
        let c = store.corruptions();
        tracing::info!(
            frames = m.frames_appended.load(std::sync::atomic::Ordering::Relaxed),
            segments_sealed = m.segments_sealed.load(std::sync::atomic::Ordering::Relaxed),
            out_of_space = store.is_out_of_space(),
            corruptions = c.len(),
            "status"
        );
        if once {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(30));
    }
}

fn demo(args: &Args) -> Result<(), String> {
    let cameras = args.number("--cameras", 4)? as usize;
    let seconds = args.number("--seconds", 10)? as i64;
    let store = open(args)?;
    let now = storage_core::SystemClock.now_us();
    let start = now - seconds * 1_000_000;
    let mut streams = Vec::new();
    for c in 0..cameras {
        streams.push(
            store.open_stream(&format!("demo-{c:03}"), Codec::H264, b"\0\0\0\x01demo-sps\0\0\0\x01demo-pps").map_err(|e| e.to_string())?,
        );
    }
    let mut payload = vec![0u8; 200_000];
    for (i, b) in payload.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    let mut last = vec![0u64; cameras];
    for n in 0..seconds * 25 {
        for (c, s) in streams.iter_mut().enumerate() {
            let key = n % 25 == 0;
            let size = if key { 125_000 } else { 15_000 };
            last[c] = s
                .append(FrameIn { ts_us: start + n * 40_000 + c as i64, pts_90k: Some(n * 3600), key, payload: &payload[..size] })
                .map_err(|e| e.to_string())?;
        }
    }
    for (c, s) in streams.into_iter().enumerate() {
        s.close().map_err(|e| e.to_string())?;
        println!("demo-{c:03}: {} frames durable", last[c]);
    }
    Ok(())
}

fn recordings(args: &Args) -> Result<(), String> {
    let camera = args.value("--camera").ok_or("--camera ID is required")?;
    let from = args.value("--from").map_or(Ok(i64::MIN + 1), time::parse_rfc3339)?;
    let to = args.value("--to").map_or(Ok(i64::MAX), time::parse_rfc3339)?;
    let store = open(args)?;
    let rec = store.recordings(camera, from, to).map_err(|e| e.to_string())?;
    for s in &rec.spans {
        println!("recorded {} .. {}", time::format_rfc3339(s.start_us), time::format_rfc3339(s.end_us));
    }
    for g in &rec.gaps {
        if g.start_us > i64::MIN + 1 && g.end_us < i64::MAX {
            println!("gap      {} .. {}", time::format_rfc3339(g.start_us), time::format_rfc3339(g.end_us));
        }
    }
    Ok(())
}
