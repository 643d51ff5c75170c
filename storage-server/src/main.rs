//! `camvault`: the gRPC server over storage-core and the operator's command.
//!
//! ```text
//! camvault serve [--config camvault.toml]      run the server (default: ./camvault-data, 127.0.0.1:50051)
//! camvault ingest FILE.h264|FILE.h265 --camera ID [--fps N] [--fast]
//! camvault recordings|play|export|hold|retention|audit|camera|token ...   (--server, --token or CAMVAULT_SERVER/CAMVAULT_TOKEN)
//! camvault verify-export FILE.mp4 MANIFEST.json
//! camvault scrub|demo [--data DIR]             local maintenance over a data directory
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::unwrap_used)]

mod client;

use camvault_server::{digest, h26x, metrics, mp4_in, now_us, proto, server, time};

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use storage_core::{Codec, FlushPolicy, FrameIn, Store, StoreConfig};

/// Command-line arguments: a verb, then positionals and `--name value` options.
pub struct Args {
    verb: String,
    rest: Vec<String>,
}

const FLAGS: [&str; 5] = ["--fast", "--follow", "--all", "--verbose", "--once"];

impl Args {
    fn value(&self, name: &str) -> Option<&str> {
        self.rest.iter().position(|a| a == name).and_then(|i| self.rest.get(i + 1)).map(String::as_str)
    }

    fn flag(&self, name: &str) -> bool {
        self.rest.iter().any(|a| a == name)
    }

    /// The `n`th argument that is neither an option nor an option's value.
    fn positional(&self, n: usize) -> Option<&str> {
        let mut skip = false;
        let mut seen = 0;
        for a in &self.rest {
            if skip {
                skip = false;
                continue;
            }
            if a.starts_with("--") {
                skip = !FLAGS.contains(&a.as_str());
                continue;
            }
            if seen == n {
                return Some(a);
            }
            seen += 1;
        }
        None
    }
}

const USAGE: &str = "usage: camvault <command> [options]
  serve [--config camvault.toml]           run the gRPC server (embedded default: ./camvault-data on 127.0.0.1:50051)
        [--data DIR] [--listen ADDR] [--metrics ADDR] [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]
  ingest FILE --camera ID [--fps 25] [--fast] [--codec h264|h265]
  recordings --camera ID [--from T] [--to T]
  play --camera ID --from T --to T --purpose P [--follow] [--requester R] [--approval REF] [--justification emergency|repair|written-request --document REF]
  export --camera ID --from T --to T --out FILE.mp4 --purpose P [--requester R] [--approval REF] [--digest blake3|sha256] [...]
  hold place --case REF --cameras a,b --from T --to T --reason R | hold release --id N --reason R | hold list [--all]
  retention get --camera ID | retention set --camera ID --days N [--reason R] | retention sweep
  audit query [--actor A] [--action A] [--camera C] [--from T] [--to T] [--limit N] | audit verify
  camera put --id ID --unit U [--sectors a,b] [--location L] [--model M] [--certification C] | camera list | camera health --camera ID
  token create --name N --unit U --roles r1,r2 [--sectors s] [--cameras c] | token revoke --id ID | token list
  verify-export FILE.mp4 MANIFEST.json [--public-key HEX]
  scrub [--data DIR]                       check every sealed segment without keys
  demo [--data DIR] [--cameras N] [--seconds S]   write synthetic streams locally
client options: --server http(s)://HOST:PORT (or CAMVAULT_SERVER), --token TOKEN (or CAMVAULT_TOKEN),
  TLS: --ca CA.pem [--cert client.pem --key client.key] (or CAMVAULT_CA, CAMVAULT_CERT, CAMVAULT_KEY); times are RFC 3339";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let mut argv = std::env::args().skip(1);
    let Some(verb) = argv.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let args = Args { verb, rest: argv.collect() };
    let result = match args.verb.as_str() {
        "serve" => serve(&args),
        "scrub" => scrub(&args),
        "demo" => demo(&args),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        // A client verb is one call at a time: on one thread its connection and the code
        // reading the call's messages do not wake each other across threads once per message
        // (receiving an export, 0.17-0.20 -> 0.13-0.14 CPU s/GB; BENCHMARKS.md, History).
        verb => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(client::run(verb, &args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("camvault {}: {e}", args.verb);
            ExitCode::FAILURE
        }
    }
}

/// HTTP/2 receive window of one call (one camera's publish stream): two 4K I-frames.
const HTTP2_STREAM_WINDOW_BYTES: u32 = 4 << 20;
/// Largest HTTP/2 frame the server accepts (the protocol's default is 16 KiB).
const HTTP2_FRAME_BYTES: u32 = 1 << 20;
/// HTTP/2 receive window of one connection, shared by its calls.
const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// How long running calls (live publishers, follows) may continue after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// `camvault.toml` (see the sample in the repository root).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerConfig {
    #[serde(default = "default_data")]
    data_dir: PathBuf,
    #[serde(default)]
    key_dir: Option<PathBuf>,
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_retention")]
    retention_days_default: u32,
    #[serde(default = "default_flush_ms")]
    flush_interval_ms: u64,
    #[serde(default = "default_sweep_s")]
    sweep_interval_s: u64,
    /// Server certificate chain (PEM); with `tls_key`, the server speaks TLS only.
    #[serde(default)]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[serde(default)]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: mutual TLS.
    #[serde(default)]
    tls_client_ca: Option<PathBuf>,
    /// Prometheus metrics address; empty disables.
    #[serde(default = "default_metrics")]
    metrics_listen: String,
}

fn default_metrics() -> String {
    "127.0.0.1:9464".into()
}

fn default_data() -> PathBuf {
    PathBuf::from("./camvault-data")
}
fn default_listen() -> String {
    "127.0.0.1:50051".into()
}
fn default_retention() -> u32 {
    30
}
fn default_flush_ms() -> u64 {
    1000
}
fn default_sweep_s() -> u64 {
    3600
}

fn load_config(args: &Args) -> Result<ServerConfig, String> {
    match args.value("--config") {
        Some(p) => {
            toml::from_str(&std::fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}"))?).map_err(|e| format!("{p}: {e}"))
        }
        None => Ok(ServerConfig {
            data_dir: args.value("--data").map(PathBuf::from).unwrap_or_else(default_data),
            key_dir: None,
            listen: args.value("--listen").map(String::from).unwrap_or_else(default_listen),
            retention_days_default: default_retention(),
            flush_interval_ms: default_flush_ms(),
            sweep_interval_s: default_sweep_s(),
            metrics_listen: args.value("--metrics").map(String::from).unwrap_or_else(default_metrics),
            tls_cert: args.value("--tls-cert").map(PathBuf::from),
            tls_key: args.value("--tls-key").map(PathBuf::from),
            tls_client_ca: args.value("--tls-client-ca").map(PathBuf::from),
        }),
    }
}

fn serve(args: &Args) -> Result<(), String> {
    let cfg = load_config(args)?;
    let mut sc = StoreConfig::new(&cfg.data_dir);
    if let Some(k) = &cfg.key_dir {
        sc.key_dir = k.clone();
    }
    sc.retention_days_default = cfg.retention_days_default;
    sc.flush = FlushPolicy::Interval(Duration::from_millis(cfg.flush_interval_ms));
    sc.sweep_interval = Some(Duration::from_secs(cfg.sweep_interval_s));
    let store = Arc::new(Store::open(sc).map_err(|e| format!("cannot open the store in {}: {e}", cfg.data_dir.display()))?);
    let (srv, first_token) = server::Server::new(store.clone(), cfg.data_dir.join("server"))?;
    if let Some(t) = first_token {
        // Shown once: only its hash is stored.
        println!("first admin token (shown once, store it now): {t}");
    }
    let addr: std::net::SocketAddr = cfg.listen.parse().map_err(|e| format!("listen address {}: {e}", cfg.listen))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let store_for_metrics = store.clone();
    rt.block_on(async move {
        let store = store_for_metrics;
        if !cfg.metrics_listen.trim().is_empty() {
            let l = tokio::net::TcpListener::bind(&cfg.metrics_listen)
                .await
                .map_err(|e| format!("cannot listen on {} for metrics: {e}", cfg.metrics_listen))?;
            tracing::info!(addr = %cfg.metrics_listen, "Prometheus metrics at /metrics");
            tokio::spawn(metrics::serve(l, srv.metrics.clone(), store.clone()));
        }
        let api = server::Api(Arc::new(srv));
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| e.to_string())?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| e.to_string())?;
        let m = server::MESSAGE_BYTES_MAX;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        tracing::info!(%addr, data = %cfg.data_dir.display(), "camvault serving");
        let stopping = Arc::new(tokio::sync::Notify::new());
        let stop_signal = stopping.clone();
        let shutdown = async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            tracing::info!("shutting down: no new calls; running calls get {} s", SHUTDOWN_GRACE.as_secs());
            stop_signal.notify_one();
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls_config(&cfg)? {
            builder = builder.tls_config(tls).map_err(|e| format!("TLS configuration: {e}"))?;
        }
        let serving = builder
            // Per-connection concurrency is bounded; deadlines come from each call's grpc-timeout
            // (a live publish stream has none), and silent publishers time out on their own.
            .concurrency_limit_per_connection(server::CALLS_PER_CONNECTION_MAX)
            // HTTP/2 receive windows sized for video: the 64 KiB protocol default lets a
            // publisher send one window per round trip, well under a camera's I-frame. The
            // connection window bounds what one client can have in flight.
            .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
            // Larger HTTP/2 DATA frames: a 130 KiB I-frame arrives in one frame instead of nine
            // 16 KiB ones, each a wake-up of the call's task.
            .max_frame_size(HTTP2_FRAME_BYTES)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(camvault_server::ingest::IngestService::new(api.clone()))
            .add_service(proto::catalog_server::CatalogServer::new(api.clone()))
            .add_service(proto::playback_server::PlaybackServer::new(api.clone()).max_encoding_message_size(m))
            .add_service(proto::export_server::ExportServer::new(api.clone()).max_encoding_message_size(m))
            .add_service(proto::holds_server::HoldsServer::new(api.clone()))
            .add_service(proto::retention_server::RetentionServer::new(api.clone()))
            .add_service(proto::audit_server::AuditServer::new(api.clone()))
            .add_service(proto::admin_server::AdminServer::new(api.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |c| {
                    c.and_then(camvault_server::conn::ReadAhead::accepted)
                }),
                shutdown,
            );
        tokio::select! {
            r = serving => r.map_err(|e| e.to_string()),
            _ = async { stopping.notified().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                tracing::warn!("calls still running after the grace period: closing them (their segments are sealed)");
                Ok(())
            }
        }
    })?;
    // The runtime's tasks are dropped with it: each open stream's writer seals its segment.
    drop(rt);
    // Dropping the last handle flushes: every acknowledged frame is durable before exit.
    store.flush().map_err(|e| e.to_string())?;
    drop(store);
    Ok(())
}

/// TLS (and mutual TLS) from the configuration; `None` for plaintext.
fn tls_config(cfg: &ServerConfig) -> Result<Option<tonic::transport::ServerTlsConfig>, String> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    match (&cfg.tls_cert, &cfg.tls_key) {
        (None, None) => {
            if cfg.tls_client_ca.is_some() {
                return Err("tls_client_ca needs tls_cert and tls_key".into());
            }
            Ok(None)
        }
        (Some(c), Some(k)) => {
            let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(c)?, read(k)?));
            if let Some(ca) = &cfg.tls_client_ca {
                tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
            }
            Ok(Some(tls))
        }
        _ => Err("tls_cert and tls_key go together".into()),
    }
}

fn open_local(args: &Args) -> Result<Store, String> {
    let data = args.value("--data").map(PathBuf::from).unwrap_or_else(default_data);
    Store::open(StoreConfig::new(&data)).map_err(|e| format!("cannot open the store in {}: {e}", data.display()))
}

fn scrub(args: &Args) -> Result<(), String> {
    let store = open_local(args)?;
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

fn demo(args: &Args) -> Result<(), String> {
    let number =
        |name: &str, default: u64| args.value(name).map_or(Ok(default), |v| v.parse::<u64>().map_err(|_| format!("{name} takes a number")));
    let cameras = number("--cameras", 4)? as usize;
    let seconds = number("--seconds", 10)? as i64;
    let store = open_local(args)?;
    let start = now_us() - seconds * 1_000_000;
    let mut streams = Vec::new();
    for c in 0..cameras {
        streams.push(
            store.open_stream(&format!("demo-{c:03}"), Codec::H264, b"\0\0\0\x01demo-sps\0\0\0\x01demo-pps").map_err(|e| e.to_string())?,
        );
    }
    let payload: Vec<u8> = (0..200_000usize).map(|i| (i * 31 % 251) as u8).collect();
    for n in 0..seconds * 25 {
        for (c, s) in streams.iter_mut().enumerate() {
            let key = n % 25 == 0;
            let size = if key { 125_000 } else { 15_000 };
            s.append(FrameIn { ts_us: start + n * 40_000 + c as i64, pts_90k: Some(n * 3600), key, payload: &payload[..size] })
                .map_err(|e| e.to_string())?;
        }
    }
    for s in streams {
        s.close().map_err(|e| e.to_string())?;
    }
    println!("{cameras} demo cameras, {seconds} s each");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_config_parses_with_the_defaults() {
        let c: ServerConfig = toml::from_str(include_str!("../../camvault.toml")).expect("sample config");
        assert_eq!(c.listen, "127.0.0.1:50051");
        assert_eq!(c.retention_days_default, 30);
        assert_eq!(c.data_dir, PathBuf::from("./camvault-data"));
        assert!(toml::from_str::<ServerConfig>("unknown_key = 1").is_err(), "typos are refused");
    }

    #[test]
    fn positionals_skip_options_and_their_values() {
        let a = Args { verb: "hold".into(), rest: ["--server", "x", "place", "--fast", "--case", "c", "y"].map(String::from).to_vec() };
        assert_eq!(a.positional(0), Some("place"));
        assert_eq!(a.positional(1), Some("y"));
        assert!(a.flag("--fast"));
        assert_eq!(a.value("--case"), Some("c"));
    }
}
