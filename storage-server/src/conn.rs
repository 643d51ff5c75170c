//! Connections: the server's accepted connections (`TCP_NODELAY` on, reads through a
//! read-ahead buffer), and the HTTP/2 settings of its clients.
//!
//! The server accepts its own connections (so that it can wrap them), and tonic applies its
//! `tcp_nodelay` setting only to connections it accepts itself. Without `TCP_NODELAY` the
//! server's small writes (HTTP/2 window updates, acknowledgements) waited behind Nagle's
//! algorithm for the peer's delayed ACK, up to 40 ms each: one publishing stream was held to
//! one 4 MiB receive window per 40 ms, about 100 MB/s (BENCHMARKS.md).
//!
//! HTTP/2 reads the socket through a frame decoder whose buffer starts at 8 KiB and is
//! re-allocated at that size whenever earlier frames are still referenced, which they are while
//! publish calls hold their data. On a publishing connection half of its `recv` calls then return
//! exactly 8 KiB, and each call pays the kernel's per-call work (socket lock, receive-window
//! update, acknowledgement). Reading the socket in `READ_AHEAD_BYTES` pieces and serving the
//! decoder from memory costs one extra copy of the bytes and saves most of those calls.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes read from the socket per `recv` when the caller asks for less. 64 KiB (a loopback
/// segment) measured about as well as 256 KiB (BENCHMARKS.md, History) at a quarter of the
/// memory per connection: a recorder may hold thousands of connections, one per camera.
pub const READ_AHEAD_BYTES: usize = 64 << 10;

/// HTTP/2 receive window of one call on a client's connection: an export streams 1 MiB chunks.
pub const CLIENT_STREAM_WINDOW_BYTES: u32 = 8 << 20;
/// HTTP/2 receive window of a client's connection, shared by its calls.
pub const CLIENT_CONNECTION_WINDOW_BYTES: u32 = 32 << 20;
/// Largest HTTP/2 frame a client accepts (the protocol's default is 16 KiB).
pub const CLIENT_FRAME_BYTES: u32 = 1 << 20;

/// A client endpoint sized for video, as the server is: with the 64 KiB protocol default
/// window an export moves one window per round trip, and with 16 KiB frames a 1 MiB export
/// chunk arrives as 64 frames, each a wake-up of the receiving call.
pub fn client_endpoint(endpoint: tonic::transport::Endpoint) -> tonic::transport::Endpoint {
    endpoint
        .initial_stream_window_size(CLIENT_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CLIENT_CONNECTION_WINDOW_BYTES)
        .max_frame_size(CLIENT_FRAME_BYTES)
}

/// A TCP connection whose reads are served from a `READ_AHEAD_BYTES` buffer. Writes pass
/// through unchanged.
pub struct ReadAhead {
    inner: TcpStream,
    /// Allocated at the first read, so an idle connection costs no buffer.
    buf: Vec<u8>,
    /// `buf[start..end]` has been read from the socket and not yet handed out.
    start: usize,
    end: usize,
}

impl ReadAhead {
    /// Wraps an accepted connection and turns Nagle's algorithm off on it.
    pub fn accepted(inner: TcpStream) -> io::Result<Self> {
        inner.set_nodelay(true)?;
        Ok(ReadAhead { inner, buf: Vec::new(), start: 0, end: 0 })
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            // A caller that asks for as much as the buffer holds reads the socket directly:
            // copying through the buffer would gain nothing.
            if out.remaining() >= READ_AHEAD_BYTES {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buf.is_empty() {
                this.buf = vec![0; READ_AHEAD_BYTES];
            }
            let mut fill = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut fill) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            this.start = 0;
            this.end = fill.filled().len();
            if this.end == 0 {
                // End of stream: nothing to copy, and the caller sees the empty read.
                return Poll::Ready(Ok(()));
            }
        }
        let n = out.remaining().min(this.end - this.start);
        out.put_slice(&this.buf[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for ReadAhead {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair: the accepted side wrapped, the client side plain.
    async fn pair() -> (ReadAhead, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        (ReadAhead::accepted(accepted).expect("nodelay"), client)
    }

    /// Bytes that differ at every offset, so a piece served twice or skipped shows.
    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn small_reads_get_every_byte_in_order_then_end_of_stream() {
        let (mut server, mut client) = pair().await;
        // More than two buffers' worth, so the buffer is refilled mid-stream.
        let sent = pattern(2 * READ_AHEAD_BYTES + 12_345);
        let writer = tokio::spawn({
            let sent = sent.clone();
            async move {
                client.write_all(&sent).await.expect("write");
                client.shutdown().await.expect("shutdown");
            }
        });
        let mut got = Vec::new();
        let mut piece = [0u8; 8 << 10];
        loop {
            let n = server.read(&mut piece).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        writer.await.expect("writer");
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes reordered or duplicated");
        // The small reads went through the buffer.
        assert_eq!(server.buf.len(), READ_AHEAD_BYTES);
    }

    #[tokio::test]
    async fn buffered_bytes_are_served_before_a_large_read_bypasses_the_buffer() {
        let (mut server, mut client) = pair().await;
        let sent = pattern(3 * READ_AHEAD_BYTES);
        client.write_all(&sent).await.expect("write");
        client.shutdown().await.expect("shutdown");
        // A small read fills the buffer; a large read must first drain what it holds.
        let mut first = [0u8; 100];
        let n = server.read(&mut first).await.expect("read");
        assert!(n > 0);
        let mut got = first[..n].to_vec();
        let mut large = vec![0u8; 2 * READ_AHEAD_BYTES];
        loop {
            let n = server.read(&mut large).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&large[..n]);
        }
        assert!(got == sent, "bytes reordered, lost or duplicated around the bypass");
    }

    #[tokio::test]
    async fn a_caller_reading_in_large_pieces_reads_the_socket_directly() {
        let (mut server, mut client) = pair().await;
        let sent = pattern(READ_AHEAD_BYTES / 2);
        client.write_all(&sent).await.expect("write");
        let mut large = vec![0u8; READ_AHEAD_BYTES];
        let n = server.read(&mut large).await.expect("read");
        assert!(n > 0 && large[..n] == sent[..n]);
        assert!(server.buf.is_empty(), "a large read went through the buffer: one copy too many");
    }

    #[tokio::test]
    async fn writes_and_peer_address_pass_through() {
        let (mut server, mut client) = pair().await;
        assert_eq!(server.connect_info().remote_addr(), Some(client.local_addr().expect("addr")));
        assert!(server.inner.nodelay().expect("nodelay"), "small writes would wait for the peer's delayed ACK");
        server.write_all(b"window update").await.expect("write");
        server.flush().await.expect("flush");
        let mut got = [0u8; 13];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"window update");
        // An idle connection holds no buffer.
        assert!(server.buf.is_empty());
    }
}
