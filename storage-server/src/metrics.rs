//! Prometheus metrics over plain HTTP (`GET /metrics`, text format 0.0.4) on their own port.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Per-camera ingest counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct CameraCounters {
    /// Frames accepted.
    pub frames: u64,
    /// Payload bytes accepted.
    pub bytes: u64,
    /// Frames refused (each ends its publish stream).
    pub refused: u64,
    /// Frames accepted but not yet durable, as of the last acknowledgement.
    pub durable_lag: u64,
}

/// Counters the server updates.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// Ingest counters by camera.
    pub cameras: Mutex<BTreeMap<String, CameraCounters>>,
    /// Calls refused for a missing, unknown or insufficient credential.
    pub auth_failures: AtomicU64,
}

impl ServerMetrics {
    /// Updates one camera's counters.
    pub fn camera(&self, camera: &str, f: impl FnOnce(&mut CameraCounters)) {
        if let Ok(mut m) = self.cameras.lock() {
            match m.get_mut(camera) {
                Some(c) => f(c),
                None => f(m.entry(camera.to_string()).or_default()),
            }
        }
    }
}

/// Name, type, help text and accessor of a per-camera series.
type Series = (&'static str, &'static str, &'static str, fn(&CameraCounters) -> u64);

fn render(m: &ServerMetrics, store: &storage_core::Store) -> String {
    let mut out = String::new();
    let cams = m.cameras.lock().map(|c| c.clone()).unwrap_or_default();
    let series: [Series; 4] = [
        ("camvault_frames_in_total", "counter", "Frames accepted per camera.", |c| c.frames),
        ("camvault_bytes_in_total", "counter", "Payload bytes accepted per camera.", |c| c.bytes),
        ("camvault_refused_frames_total", "counter", "Frames refused per camera (bad input, overlap, full disk).", |c| c.refused),
        ("camvault_durable_lag_frames", "gauge", "Frames accepted but not yet durable at the last acknowledgement.", |c| c.durable_lag),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (cam, c) in &cams {
            let _ = writeln!(out, "{name}{{camera=\"{cam}\"}} {}", get(c));
        }
    }
    let s = store.metrics();
    let globals = [
        (
            "camvault_refused_writes_no_space_total",
            "counter",
            "Writes refused because the disk was full.",
            s.no_space_refusals.load(Ordering::Relaxed),
        ),
        ("camvault_segments_erased_total", "counter", "Segments crypto-erased.", s.segments_erased.load(Ordering::Relaxed)),
        ("camvault_fsync_failures_total", "counter", "Failed fsyncs (each poisons its writer).", s.fsync_failures.load(Ordering::Relaxed)),
        (
            "camvault_authorization_failures_total",
            "counter",
            "Calls refused as unauthenticated or not permitted.",
            m.auth_failures.load(Ordering::Relaxed),
        ),
        ("camvault_out_of_space", "gauge", "1 while the disk is full.", u64::from(store.is_out_of_space())),
        ("camvault_corruptions", "gauge", "Damaged structures found so far.", store.corruptions().len() as u64),
    ];
    for (name, kind, help, v) in globals {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    out
}

/// Most a request head may take; scrapers send a few hundred bytes.
const REQUEST_HEAD_MAX_BYTES: usize = 4096;
/// How long a client may take to send its request head.
const REQUEST_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads until the blank line that ends an HTTP request head. A request may arrive in
/// several TCP segments (a client that writes piecewise): answering after the first one
/// would judge a partial request line and close on a client still writing. `None` on
/// EOF, error, timeout, or a head longer than the limit.
async fn read_request_head<S: tokio::io::AsyncRead + Unpin>(sock: &mut S) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(());
            }
            if head.len() >= REQUEST_HEAD_MAX_BYTES {
                return None;
            }
            let n = sock.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(REQUEST_HEAD_TIMEOUT, read).await.ok().flatten().map(|()| head)
}

/// Serves `/metrics` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, m: Arc<ServerMetrics>, store: Arc<storage_core::Store>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else { continue };
        let (m, store) = (m.clone(), store.clone());
        tokio::spawn(async move {
            let Some(head) = read_request_head(&mut sock).await else { return };
            let req = String::from_utf8_lossy(&head);
            let resp = if req.starts_with("GET /metrics ") || req.starts_with("GET /metrics?") {
                let body = render(&m, &store);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
            };
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_request_head_split_across_writes_is_read_whole() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for piece in ["GET ", "/metrics", " HTTP/1.1\r\nHost: x\r\n", "\r\n"] {
                client.write_all(piece.as_bytes()).await.expect("write");
                tokio::task::yield_now().await;
            }
            client
        });
        let head = read_request_head(&mut server).await.expect("head");
        assert_eq!(head, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        drop(writer.await.expect("writer"));
    }

    #[tokio::test]
    async fn a_head_without_end_is_refused_at_the_limit_or_on_eof() {
        let (mut client, mut server) = tokio::io::duplex(8192);
        client.write_all(&[b'a'; REQUEST_HEAD_MAX_BYTES + 10]).await.expect("write");
        assert!(read_request_head(&mut server).await.is_none());
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET /metrics HTTP/1.1\r\n").await.expect("write");
        drop(client);
        assert!(read_request_head(&mut server).await.is_none());
    }
}
