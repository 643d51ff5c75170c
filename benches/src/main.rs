//! `camvault-bench`: multi-stream ingest against the raw-disk baseline, printed as a table.
//!
//! ```text
//! cargo build --release -p camvault-server -p camvault-benches
//! ./target/release/camvault-bench [--smoke] [--dir DIR] [--streams 1,64,1000] [--seconds N] [--4k]
//!     [--flush interval|gop|os] [--no-grpc] [--no-extras] [--extras export,ramp,erase,index] [--ramp 250,500,...]
//!     [--export-seconds N] [--warm]
//!     [--keys N] [--erase-segments N] [--repeat N]
//! ```
//!
//! The through-the-server figures start `camvault serve` from beside this binary (or
//! `CAMVAULT_BIN`); the export figure needs ffmpeg for its H.264 clip. Without either, those
//! figures are skipped with a note.

use std::path::PathBuf;
use std::time::Duration;

use camvault_benches::{run_engine, run_lookup, run_raw, run_recovery, run_rotation, run_sequential, run_sweep, Policy, Profile, Scenario};

/// Default least MB a stream count's runs move. At 1 GB the engine's 64-stream run lasted
/// 0.6 s, 0.43 s of it the final close: every stream's unsynced data fsynced at once, since
/// the whole run fit inside one group-commit period (BENCHMARKS.md, History).
const RUN_MB_MIN_DEFAULT: u64 = 4000;

const USAGE: &str = "usage: camvault-bench [options]
  --streams 1,64,1000     stream counts to run (default 1,64,1000; smoke 1,8)
  --seconds N             seconds of video per stream (default 20; smoke 2)
  --min-mb N              lengthen a stream count's runs until each moves at least N MB
                          (default 4000; smoke 0): one stream for 20 s is 10 MB, which times
                          a call's fixed costs and not its rate, and a run much shorter than
                          a few group-commit periods times mostly its final fsync
  --4k                    16 Mbit/s, 2 s GOP streams instead of 4 Mbit/s, 1 s GOP
  --flush interval|gop|os group commit every 1 s (default), fsync per GOP, or OS write-back only
  --no-grpc               skip the through-the-server runs (they start `camvault serve` from
                          beside this binary, or CAMVAULT_BIN)
  --no-extras             only the ingest tables (no ramp, export, erasure, index, recovery)
  --extras export,ramp,erase,index
                          which figures to run after the ingest tables (default: all four)
  --ramp 250,500,...      paced stream counts for the ramp (stops at the first step past the bound)
  --export-seconds N      length of the exported clip (default 3600; needs ffmpeg)
  --warm                  export with a warm page cache (default: dropped before each read, as root)
  --keys N                live data keys for the rotation figure (default 1000000)
  --erase-segments N      segments for the sweep figure (default 10000)
  --repeat N              run each stream count N times (at most 50), raw and engine in
                          alternating order, and print the median and range of each ratio
  --dir DIR               where to write (default: the temporary directory)
  --smoke                 seconds-long run that checks everything still works (CI)";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return;
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let base = arg("--dir").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("camvault-bench"));
    let streams: Vec<usize> = arg("--streams").map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect()).unwrap_or_else(|| {
        if smoke {
            vec![1, 8]
        } else {
            vec![1, 64, 1000]
        }
    });
    let seconds: u32 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(if smoke { 2 } else { 20 });
    let min_bytes: u64 =
        arg("--min-mb").and_then(|s| s.parse::<u64>().ok()).unwrap_or(if smoke { 0 } else { RUN_MB_MIN_DEFAULT }) * 1_000_000;
    let repeat: usize = arg("--repeat").and_then(|s| s.parse().ok()).unwrap_or(1).clamp(1, REPEAT_MAX);
    let profile = if args.iter().any(|a| a == "--4k") { Profile::UHD_16MBIT } else { Profile::HD_4MBIT };
    let payload = camvault_benches::video_like(8 << 20);
    let policy = match arg("--flush").as_deref() {
        None | Some("interval") => Policy::Interval,
        Some("gop") => Policy::PerGop,
        Some("os") => Policy::OsWriteBack,
        Some(other) => fail("--flush", format!("{other}: interval, gop or os")),
    };
    println!(
        "camvault-bench: {} kbit/s, {} fps, GOP {} frames, {seconds} s of video per stream (more where a run would move less than {} MB), durability {policy:?} (1 s period)",
        profile.bitrate_bps / 1000,
        profile.fps,
        profile.gop_frames,
        min_bytes / 1_000_000
    );
    let reporting0 = camvault_benches::host_reporting();
    match reporting0 {
        Some(r) if r.is_off() => println!("host free page reporting: off (page_reporting_order above the largest free block)"),
        Some(r) => println!(
            "host free page reporting: ON (min_free_ms {}, max_waiting_mib {}): freed memory goes back to the host and the next touch of it pays a host fault, about 7 us more per 4 KiB page here, so runs can spend twice the CPU per GB or more; turn it off for the session: echo {} > /sys/module/page_reporting/parameters/page_reporting_order (BENCHMARKS.md, \"Machine\")",
            r.min_free_ms,
            r.max_waiting_mib,
            camvault_benches::BUDDY_ORDER_MAX + 1
        ),
        None => {}
    }
    println!(
        "| streams | s of video each | raw MB/s | engine MB/s | engine/raw | fjall MB/s | engine/fjall | sequential MB/s | engine/seq | write amp engine (fjall) | RSS/stream KiB | CPU s/GB engine (raw, fjall) | frames verified engine, fjall | first frames (segment creation) s | final close s engine (raw) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut failed = false;
    // The server binary drives the through-the-server figures; without it they are skipped.
    let server_bin =
        if args.iter().any(|a| a == "--no-grpc") { Err("--no-grpc".to_string()) } else { camvault_benches::grpc::server_binary() };
    let mut grpc_rows = Vec::new();
    let mut ratios = Vec::new();
    for (run, &n) in streams.iter().flat_map(|n| std::iter::repeat_n(n, repeat)).enumerate() {
        let seconds = profile.seconds_for(n, seconds, min_bytes);
        let sc = Scenario { streams: n, profile, seconds, threads: 2, flush: Duration::from_secs(1), policy };
        let dir = base.join(format!("s{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        // Whichever side runs second inherits the disk and memory state the first one left:
        // repeated runs alternate the order, so that no side always pays it.
        let raw_side = || {
            let raw = run_raw(&dir.join("raw"), &sc, &payload).unwrap_or_else(|e| fail("raw baseline", e));
            let _ = std::fs::remove_dir_all(dir.join("raw"));
            raw
        };
        let engine_side = || {
            let eng = run_engine(&dir.join("engine"), &sc, &payload).unwrap_or_else(|e| fail("engine run", e));
            let _ = std::fs::remove_dir_all(dir.join("engine"));
            eng
        };
        let (raw, eng) = if run % 2 == 0 {
            let raw = raw_side();
            (raw, engine_side())
        } else {
            let eng = engine_side();
            (raw_side(), eng)
        };
        if let (Ok(bin), Policy::Interval) = (&server_bin, policy) {
            let g = camvault_benches::grpc::run_grpc_ingest(bin, &dir.join("grpc"), &sc, &payload).unwrap_or_else(|e| fail("gRPC run", e));
            let _ = std::fs::remove_dir_all(dir.join("grpc"));
            grpc_rows.push((n, eng, g.0, g.1));
        }
        let peer = camvault_benches::peer::run_peer(&dir.join("fjall"), &sc, &payload).unwrap_or_else(|e| fail("fjall run", e));
        let _ = std::fs::remove_dir_all(dir.join("fjall"));
        let seq = run_sequential(&dir.join("seq"), raw.payload_bytes, sc.flush).unwrap_or_else(|e| fail("sequential baseline", e));
        let _ = std::fs::remove_dir_all(&dir);
        let ok = eng.verified_frames == eng.frames && peer.verified_frames == peer.frames;
        failed |= !ok;
        ratios.push((n, eng.mb_s() / raw.mb_s(), eng.mb_s() / peer.mb_s()));
        println!(
            "| {n} | {seconds} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {:.3} ({:.2}) | {} | {:.2} ({:.2}, {:.2}) | {}/{}, {}/{}{} | {:.2} | {:.2} ({:.2}) |",
            raw.mb_s(),
            eng.mb_s(),
            eng.mb_s() / raw.mb_s(),
            peer.mb_s(),
            eng.mb_s() / peer.mb_s(),
            seq.mb_s(),
            eng.mb_s() / seq.mb_s(),
            eng.write_amp(),
            peer.write_amp(),
            eng.rss_per_stream / 1024,
            eng.cpu_s_per_gb(),
            raw.cpu_s_per_gb(),
            peer.cpu_s_per_gb(),
            eng.verified_frames,
            eng.frames,
            peer.verified_frames,
            peer.frames,
            if ok { "" } else { " LOST OR REORDERED FRAMES" },
            eng.connect.as_secs_f64(),
            eng.close.as_secs_f64(),
            raw.close.as_secs_f64()
        );
    }
    match &server_bin {
        Ok(_) if !grpc_rows.is_empty() => {
            println!();
            println!("| streams over gRPC (loopback, separate server process) | engine MB/s | gRPC MB/s | gRPC/engine | CPU s/GB engine | CPU s/GB server | CPU s/GB client+server | frames verified |");
            println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
            for (n, eng, g, server_cpu) in &grpc_rows {
                let ok = g.verified_frames == g.frames;
                failed |= !ok;
                println!(
                    "| {n} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {}/{}{} |",
                    eng.mb_s(),
                    g.mb_s(),
                    g.mb_s() / eng.mb_s(),
                    eng.cpu_s_per_gb(),
                    server_cpu / (g.payload_bytes as f64 / 1e9),
                    g.cpu_s_per_gb(),
                    g.verified_frames,
                    g.frames,
                    if ok { "" } else { " LOST OR REORDERED FRAMES" }
                );
            }
        }
        Ok(_) => {}
        Err(e) => println!("\n(through-the-server figures skipped: {e})"),
    }
    if repeat > 1 {
        print_spread(&streams, &ratios, &grpc_rows);
    }
    print_host_reported(reporting0);
    if failed {
        std::process::exit(1);
    }
    if args.iter().any(|a| a == "--no-extras") {
        return;
    }
    let extras = arg("--extras");
    let extra = |name: &str| extras.as_deref().is_none_or(|list| list.split(',').any(|x| x == name));
    if let (Ok(bin), true) = (&server_bin, extra("export")) {
        let seconds: u32 = arg("--export-seconds").and_then(|s| s.parse().ok()).unwrap_or(if smoke { 4 } else { 3600 });
        export(bin, &base, seconds, !args.iter().any(|a| a == "--warm"));
    }
    let steps: Vec<usize> = arg("--ramp").map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect()).unwrap_or_else(|| {
        if smoke {
            vec![2, 4]
        } else {
            vec![250, 500, 1000, 1500, 2000, 3000]
        }
    });
    if extra("ramp") {
        ramp(&base, profile, &steps, if smoke { 2 } else { 10 }, &payload);
    }
    if extra("erase") {
        erase_costs(&base, smoke, &arg("--keys"), &arg("--erase-segments"));
    }
    if extra("index") {
        index_and_recovery(&base, smoke, &payload);
    }
    print_host_reported(reporting0);
}

/// Most runs `--repeat` takes per stream count (each is a minute or more at 1,000 streams).
const REPEAT_MAX: usize = 50;

/// The median and range of each ratio over the repeated runs of each stream count: single runs
/// on a shared machine vary by about a tenth either way (BENCHMARKS.md).
fn print_spread(
    streams: &[usize],
    ratios: &[(usize, f64, f64)],
    grpc_rows: &[(usize, camvault_benches::RunResult, camvault_benches::RunResult, f64)],
) {
    println!();
    println!("| streams | runs | engine/raw median (min-max) | engine/fjall median (min-max) | gRPC/engine median (min-max) |");
    println!("|---:|---:|---|---|---|");
    for &n in streams {
        let of = |v: Vec<f64>| match Spread::of(v) {
            Some(s) => format!("{:.2} ({:.2}-{:.2})", s.median, s.min, s.max),
            None => "-".into(),
        };
        let raw: Vec<f64> = ratios.iter().filter(|r| r.0 == n).map(|r| r.1).collect();
        let runs = raw.len();
        let fjall = ratios.iter().filter(|r| r.0 == n).map(|r| r.2).collect();
        let grpc = grpc_rows.iter().filter(|r| r.0 == n).map(|(_, eng, g, _)| g.mb_s() / eng.mb_s()).collect();
        println!("| {n} | {runs} | {} | {} | {} |", of(raw), of(fjall), of(grpc));
    }
    println!(
        "(resident memory per stream means something in the first run of each count only: later runs reuse memory the allocator kept)"
    );
}

/// Median, least and greatest of a set of figures.
#[derive(Debug, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    /// `None` for no figures; the median of an even count is the mean of the middle two.
    fn of(mut v: Vec<f64>) -> Option<Spread> {
        v.sort_by(f64::total_cmp);
        let (min, max) = (*v.first()?, *v.last()?);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
        Some(Spread { median, min, max })
    }
}

/// Memory the guest gave back to the host since `since` (none: figures undistorted by it).
fn print_host_reported(since: Option<camvault_benches::HostReporting>) {
    if let (Some(a), Some(b)) = (since, camvault_benches::host_reporting()) {
        println!("\nmemory reported to the host so far in this run: {} MiB", b.reported_kib.saturating_sub(a.reported_kib) >> 10);
    }
}

/// Paced streams, stepped up until durable acknowledgements or frame delivery fall behind.
fn ramp(base: &std::path::Path, profile: Profile, steps: &[usize], seconds: u32, payload: &[u8]) {
    let flush = Duration::from_secs(1);
    let bound_ms = flush.as_secs_f64() * 1e3 + 50.0;
    println!();
    println!(
        "| ramp: paced streams, group commit 1 s | offered MB/s | durable-ack p50 / p99 / max ms: engine | raw files | frames later than {} s (dropped): engine | raw | longest append ms: engine | raw | engine p99 <= {bound_ms:.0} ms, no drops |",
        camvault_benches::ramp::CAMERA_BUFFER.as_secs()
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let mut knee = None;
    for &n in steps {
        let dir = base.join(format!("ramp{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        let raw = camvault_benches::ramp::run_step_raw(&dir.join("raw"), profile, n, seconds, flush, payload)
            .unwrap_or_else(|e| fail("ramp (raw)", e));
        let _ = std::fs::remove_dir_all(&dir);
        let r = camvault_benches::ramp::run_step(&dir, profile, n, seconds, flush, payload).unwrap_or_else(|e| fail("ramp", e));
        let _ = std::fs::remove_dir_all(&dir);
        let ok = r.p99_ms <= bound_ms && r.late_frames == 0;
        println!(
            "| {n} | {:.0} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {}/{} | {}/{} | {:.0} | {:.0} | {} |",
            r.offered_mb_s,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            raw.p50_ms,
            raw.p99_ms,
            raw.max_ms,
            r.late_frames,
            r.frames,
            raw.late_frames,
            raw.frames,
            r.max_append_ms,
            raw.max_append_ms,
            if ok { "yes" } else { "no" }
        );
        if !ok {
            break;
        }
        knee = Some(n);
    }
    match knee {
        Some(k) if Some(&k) == steps.last() => println!("| knee | above {k} streams (every step kept up) | | | | | |"),
        Some(k) => println!("| knee | between {k} and the next step | | | | | |"),
        None => println!("| knee | below {} streams | | | | | |", steps.first().copied().unwrap_or(0)),
    }
}

/// Export of a clip of real encoded video against reading its segment files raw.
fn export(bin: &std::path::Path, base: &std::path::Path, seconds: u32, cold: bool) {
    let dir = base.join("export");
    let _ = std::fs::remove_dir_all(&dir);
    let (config, clip) = match camvault_benches::grpc::encode_clip(&dir.join("clip"), 10) {
        Ok(c) => c,
        Err(e) => {
            println!("\n(export figure skipped: {e})");
            return;
        }
    };
    let r = camvault_benches::grpc::run_export(bin, &dir, &config, &clip, 25, seconds, cold).unwrap_or_else(|e| fail("export", e));
    let _ = std::fs::remove_dir_all(&dir);
    let mb_s = |d: std::time::Duration| r.segment_bytes as f64 / d.as_secs_f64() / 1e6;
    let cache = match (r.cold, cold) {
        (true, _) => "page cache dropped before each read",
        (false, true) => "warm page cache: dropping it needs root",
        (false, false) => "warm page cache (--warm)",
    };
    println!();
    println!(
        "| export of {} s of 4 Mbit/s H.264 ({:.2} GB of segments, {cache}) | s | MB/s of segments | ratio to raw read | CPU s/GB |",
        r.seconds,
        r.segment_bytes as f64 / 1e9
    );
    println!("|---|---:|---:|---:|---|");
    let gb = r.segment_bytes as f64 / 1e9;
    println!(
        "| raw read of the segment files | {:.2} | {:.0} | 1.00 | {:.2} |",
        r.raw_read.as_secs_f64(),
        mb_s(r.raw_read),
        r.read_cpu_s.0 / gb
    );
    println!(
        "| library read (decrypt, verify) | {:.2} | {:.0} | {:.2} | {:.2} |",
        r.engine_read.as_secs_f64(),
        mb_s(r.engine_read),
        r.raw_read.as_secs_f64() / r.engine_read.as_secs_f64(),
        r.read_cpu_s.1 / gb
    );
    for e in &r.exports {
        println!(
            "| export over gRPC ({:.2} GB of MP4, {} digest{}, signed manifest) | {:.2} | {:.0} | {:.2} | {:.2} server + {:.2} client |",
            e.mp4_bytes as f64 / 1e9,
            e.digest,
            if e.digest == camvault_benches::grpc::EXPORT_DIGESTS[0] { " (default)" } else { "" },
            e.elapsed.as_secs_f64(),
            mb_s(e.elapsed),
            r.raw_read.as_secs_f64() / e.elapsed.as_secs_f64(),
            e.cpu_s.0 / gb,
            e.cpu_s.1 / gb
        );
    }
}

/// Lookup latency on a 1,000-camera x 30-day index, and open time after a crash.
fn index_and_recovery(base: &std::path::Path, smoke: bool, payload: &[u8]) {
    let (cams, days, lookups) = if smoke { (20, 2, 2_000) } else { (1000, 30, 20_000) };
    let dir = base.join("lookup");
    let _ = std::fs::remove_dir_all(&dir);
    let (open, p50, p99) = run_lookup(&dir, cams, days, lookups).unwrap_or_else(|e| fail("lookup", e));
    println!();
    println!("| index of {cams} cameras x {days} days ({} segments) | value |", cams as u64 * days * 96);
    println!("|---|---:|");
    println!("| open (catalog replay, no segment read) | {:.2} s |", open.as_secs_f64());
    println!("| lookup p50 | {p50:.1} us |");
    println!("| lookup p99 | {p99:.1} us |");
    // The crash happens in that same store: recovery replays the whole catalog as well.
    let (streams, secs) = if smoke { (20, 2) } else { (1000, 5) };
    let (crashed, clean) = run_recovery(&dir, streams, secs, payload).unwrap_or_else(|e| fail("recovery", e));
    let _ = std::fs::remove_dir_all(&dir);
    println!("| open after a crash with {streams} more cameras' streams open ({secs} s each) | {:.2} s |", crashed.as_secs_f64());
    println!("| open after a clean stop (same store) | {:.2} s |", clean.as_secs_f64());
}

/// Key rotation (the crypto-erase step) and a retention sweep, each beside its raw I/O.
fn erase_costs(base: &std::path::Path, smoke: bool, keys: &Option<String>, segments: &Option<String>) {
    let keys: u64 = keys.as_ref().and_then(|k| k.parse().ok()).unwrap_or(if smoke { 20_000 } else { 1_000_000 });
    let segments: u64 = segments.as_ref().and_then(|k| k.parse().ok()).unwrap_or(if smoke { 500 } else { 10_000 });
    println!();
    println!("| erase cost | engine s | raw same I/O s | engine/raw |");
    println!("|---|---:|---:|---:|");
    let dir = base.join("rotation");
    let _ = std::fs::remove_dir_all(&dir);
    let (eng, raw) = run_rotation(&dir, keys).unwrap_or_else(|e| fail("rotation", e));
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "| rotate {keys} live data keys (1% erased) | {:.2} | {:.2} | {:.1} |",
        eng.as_secs_f64(),
        raw.as_secs_f64(),
        eng.as_secs_f64() / raw.as_secs_f64()
    );
    let dir = base.join("sweep");
    let _ = std::fs::remove_dir_all(&dir);
    let (eng, raw, erased) = run_sweep(&dir, segments).unwrap_or_else(|e| fail("sweep", e));
    let _ = std::fs::remove_dir_all(&dir);
    if erased as u64 != segments.div_ceil(100) * 100 {
        fail("sweep", format!("erased {erased} of {segments}"));
    }
    println!(
        "| sweep erasing {erased} segments | {:.2} | {:.2} | {:.1} |",
        eng.as_secs_f64(),
        raw.as_secs_f64(),
        eng.as_secs_f64() / raw.as_secs_f64()
    );
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("{what} failed: {e}");
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn spread_takes_the_middle_figure_or_the_mean_of_the_middle_two_whatever_the_order() {
        assert_eq!(Spread::of(vec![]), None);
        assert_eq!(Spread::of(vec![0.9]), Some(Spread { median: 0.9, min: 0.9, max: 0.9 }));
        assert_eq!(Spread::of(vec![0.95, 0.81, 0.86]), Some(Spread { median: 0.86, min: 0.81, max: 0.95 }));
        assert_eq!(Spread::of(vec![1.0, 0.5, 0.75, 0.25]), Some(Spread { median: 0.625, min: 0.25, max: 1.0 }));
    }
}
