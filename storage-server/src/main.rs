//! `camvault`: the gRPC server over storage-core and the operator's command.
//!
//! ```text
//! camvault serve [--config camvault.toml] [--data DIR] [--key-dir DIR] [--listen ADDR] [--metrics ADDR] [--tls-...]
//! camvault ingest|recordings|play|export|hold|retention|audit|camera|token|server-key|decommission ...
//!          (--server, --token or CAMVAULT_SERVER / CAMVAULT_TOKEN)
//! camvault verify-export FILE.mp4 MANIFEST.json | verify-certificate CERT.json   (offline, under a trusted key)
//! camvault scrub (--config FILE | --data DIR) | demo ...      local maintenance over a data directory
//! ```
//!
//! `camvault --help` and `camvault VERB --help` describe every option.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::unwrap_used)]

mod client;

use camvault_server::config::{self, ServerConfig};
use camvault_server::{metrics, now_us, proto, server};

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use storage_core::{Codec, Env, FrameIn, Store};

/// How `serve`, `demo` and `scrub` combine their configuration, for `--help`.
const PRECEDENCE: &str = "Precedence: an option given on the command line overrides the same setting in the --config \
                          file (each override is logged), which overrides the built-in default (the values in the \
                          sample camvault.toml). Without --config every setting not given as an option is the default.";

/// The operator's command: the server, its client verbs, and local maintenance.
#[derive(Parser, Debug)]
#[command(name = "camvault", version, about = "camvault: encrypted CCTV video store (server and client)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gRPC server (default: ./camvault-data, 127.0.0.1:50051); a fresh store prints its
    /// first admin token once
    #[command(after_help = PRECEDENCE)]
    Serve(ServeArgs),
    /// Check every sealed segment of a data directory without keys, opening nothing for writing
    #[command(after_help = PRECEDENCE)]
    Scrub(ScrubArgs),
    /// Write synthetic streams into a local store (no server)
    #[command(after_help = PRECEDENCE)]
    Demo(DemoArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
}

/// Where the store is: the configuration file and the options that override it.
#[derive(Args, Debug)]
struct StoreFlags {
    /// Server configuration (see the documented sample camvault.toml)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (`data_dir`) [default: ./camvault-data]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Key directory (`key_dir`), on another volume in production [default: DATA/keys]
    #[arg(long, value_name = "DIR")]
    key_dir: Option<PathBuf>,
}

/// `camvault serve`
#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreFlags,
    /// gRPC listen address (`listen`) [default: 127.0.0.1:50051]
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Prometheus metrics address (`metrics_listen`); "" disables [default: 127.0.0.1:9464]
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Server certificate chain, PEM (`tls_cert`); with --tls-key the server speaks TLS only
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// Server private key, PEM (`tls_key`)
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// CA that client certificates must chain to, PEM (`tls_client_ca`): mutual TLS
    #[arg(long, value_name = "PEM")]
    tls_client_ca: Option<PathBuf>,
}

/// `camvault scrub`
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("store").args(["config", "data"]).required(true).multiple(true))]
struct ScrubArgs {
    /// Server configuration: scrubs its data_dir
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory to scrub
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

/// Most cameras `demo` writes: each holds an open segment and its buffer.
const DEMO_CAMERAS_MAX: u64 = 256;
/// Most seconds of video per demo camera (25 fps, ~0.5 MB/s each).
const DEMO_SECONDS_MAX: u64 = 3600;

/// `camvault demo`
#[derive(Args, Debug)]
struct DemoArgs {
    #[command(flatten)]
    store: StoreFlags,
    /// Synthetic cameras to write
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=DEMO_CAMERAS_MAX))]
    cameras: u64,
    /// Seconds of video per camera, ending now
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=DEMO_SECONDS_MAX))]
    seconds: u64,
}

fn main() -> ExitCode {
    // Parse first: `--help`, `--version` and usage errors (exit 2) print nothing else, start
    // nothing and touch no file.
    let cli = Cli::try_parse().unwrap_or_else(|e| e.exit());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    // After a successful parse the first argument is the verb: there are no options before it.
    let verb = std::env::args().nth(1).unwrap_or_default();
    let result = match cli.command {
        Command::Serve(a) => serve(a),
        Command::Scrub(a) => scrub(a),
        Command::Demo(a) => demo(a),
        Command::Client(c) => client::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("camvault {verb}: {e}");
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

/// Puts a command-line value over the configuration's: the flag wins, and says so when it
/// replaces what a configuration file set.
fn set_from_flag<T: std::fmt::Debug>(file: Option<&Path>, key: &str, flag: &str, slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        if let Some(f) = file {
            tracing::info!(config = %f.display(), "{flag} {v:?} overrides {key} = {:?} from the configuration file", slot);
        }
        *slot = v;
    }
}

/// The configuration with the command line's options over it (see `PRECEDENCE`).
fn resolve_store(flags: StoreFlags) -> Result<(ServerConfig, Option<PathBuf>), String> {
    let file = flags.config;
    let mut cfg = config::load(file.as_deref())?;
    let f = file.as_deref();
    set_from_flag(f, "data_dir", "--data", &mut cfg.data_dir, flags.data);
    set_from_flag(f, "key_dir", "--key-dir", &mut cfg.key_dir, flags.key_dir.map(Some));
    Ok((cfg, file))
}

/// Opens the store the configuration describes, with its KEK provider.
fn open_store(cfg: &ServerConfig) -> Result<Store, String> {
    let env = Env { kek: config::kek_provider(&cfg.kek)?, ..Env::default() };
    Store::open_with(config::store_config(cfg), env).map_err(|e| format!("cannot open the store in {}: {e}", cfg.data_dir.display()))
}

fn serve(a: ServeArgs) -> Result<(), String> {
    let (mut cfg, file) = resolve_store(a.store)?;
    let f = file.as_deref();
    set_from_flag(f, "listen", "--listen", &mut cfg.listen, a.listen);
    set_from_flag(f, "metrics_listen", "--metrics", &mut cfg.metrics_listen, a.metrics);
    set_from_flag(f, "tls_cert", "--tls-cert", &mut cfg.tls_cert, a.tls_cert.map(Some));
    set_from_flag(f, "tls_key", "--tls-key", &mut cfg.tls_key, a.tls_key.map(Some));
    set_from_flag(f, "tls_client_ca", "--tls-client-ca", &mut cfg.tls_client_ca, a.tls_client_ca.map(Some));
    // Refused before the store is opened: a typo in the address creates no data directory.
    let addr: std::net::SocketAddr = cfg.listen.parse().map_err(|e| format!("listen address {}: {e}", cfg.listen))?;
    let store = Arc::new(open_store(&cfg)?);
    let (srv, first_token) = server::Server::new(store.clone(), cfg.data_dir.join("server"))?;
    if let Some(t) = first_token {
        // Shown once: only its hash is stored.
        println!("first admin token (shown once, store it now): {t}");
    }
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

fn scrub(a: ScrubArgs) -> Result<(), String> {
    let (cfg, _) = resolve_store(StoreFlags { config: a.config, data: a.data, key_dir: None })?;
    let root = &cfg.data_dir;
    // Checked here so that a mistyped path is reported as such and nothing is created.
    if !root.is_dir() {
        return Err(format!("{} is not a data directory", root.display()));
    }
    let found = storage_core::offline::scrub(root).map_err(|e| format!("cannot scrub {}: {e}", root.display()))?;
    for r in &found {
        println!("CORRUPT {} offset {:?}: {}", r.path.display(), r.offset, r.detail);
    }
    println!("{} damaged segment(s) in {}", found.len(), root.display());
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!("damage found in {} segment(s)", found.len()))
    }
}

fn demo(a: DemoArgs) -> Result<(), String> {
    let (cfg, _) = resolve_store(a.store)?;
    // Bounded by the options' ranges (DEMO_CAMERAS_MAX, DEMO_SECONDS_MAX).
    let (cameras, seconds) = (a.cameras as usize, a.seconds as i64);
    let store = open_store(&cfg)?;
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

    /// clap checks its own definitions (conflicting names, bad defaults) only when asked.
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_the_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("camvault.toml");
        std::fs::write(&file, "data_dir = \"/from-file\"\nkey_dir = \"/keys-from-file\"\n").expect("write");
        let flags = |data: Option<&str>| StoreFlags { config: Some(file.clone()), data: data.map(PathBuf::from), key_dir: None };
        let (c, _) = resolve_store(flags(Some("/from-flag"))).expect("resolve");
        assert_eq!(c.data_dir, PathBuf::from("/from-flag"));
        assert_eq!(c.key_dir, Some(PathBuf::from("/keys-from-file")), "what no flag names stays the file's");
        let (c, _) = resolve_store(flags(None)).expect("resolve");
        assert_eq!(c.data_dir, PathBuf::from("/from-file"));
        let (c, _) = resolve_store(StoreFlags { config: None, data: None, key_dir: None }).expect("resolve");
        let d = config::parse("").expect("the built-in defaults");
        assert_eq!((c.data_dir, c.listen), (d.data_dir, d.listen));
    }
}
