//! What the agents' streams cost on the wire: every byte the load generator's
//! connections send and receive, counted at the socket, and each batch's size encoded
//! and gzipped the way tonic's gzip does it (flate2, level 6, one gzip member a message).

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use prost::Message;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use gpulse_proto::v1;

/// gRPC's length prefix before every message: a compressed flag and a 4-byte length
/// (PROTOCOL-HTTP2.md, "Length-Prefixed-Message").
pub const GRPC_PREFIX_BYTES: u64 = 5;
/// The level tonic compresses at (tonic/src/codec/compression.rs: `Compression::new(6)`).
const TONIC_GZIP_LEVEL: u32 = 6;

/// Bytes moved by every connection of the run, both ways.
#[derive(Debug, Default)]
pub struct Traffic {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// A TCP connection whose bytes are added to a [`Traffic`].
#[derive(Debug)]
pub struct Counted {
    inner: TcpStream,
    traffic: Arc<Traffic>,
}

impl Counted {
    pub fn new(inner: TcpStream, traffic: Arc<Traffic>) -> Counted {
        Counted { inner, traffic }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        this.traffic.received.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            this.traffic.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.traffic.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The gzip member tonic would send for `bytes`, and its size.
pub fn gzip_len(bytes: &[u8]) -> u64 {
    let mut out = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 2),
        flate2::Compression::new(TONIC_GZIP_LEVEL),
    );
    // Writing to a Vec cannot fail.
    let _ = out.write_all(bytes);
    out.finish().map_or(0, |v| v.len() as u64)
}

/// One message's size: protobuf-encoded, and gzipped as tonic sends it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sizes {
    pub encoded: u64,
    pub gzipped: u64,
}

impl Sizes {
    pub fn of(message: &v1::AgentMessage) -> Sizes {
        let encoded = message.encode_to_vec();
        Sizes {
            encoded: encoded.len() as u64,
            gzipped: gzip_len(&encoded),
        }
    }
}

/// Batch sizes added up over a sample of the run's batches.
#[derive(Debug, Default)]
pub struct Tally {
    pub messages: AtomicU64,
    pub gpu_samples: AtomicU64,
    pub encoded: AtomicU64,
    pub gzipped: AtomicU64,
}

impl Tally {
    pub fn add(&self, sizes: Sizes, gpu_samples: u64) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.gpu_samples.fetch_add(gpu_samples, Ordering::Relaxed);
        self.encoded.fetch_add(sizes.encoded, Ordering::Relaxed);
        self.gzipped.fetch_add(sizes.gzipped, Ordering::Relaxed);
    }
}

/// Bytes per GPU-sample of batches of one size, encoded and gzipped.
#[derive(Debug, Clone, Serialize)]
pub struct BatchSize {
    pub snapshots: usize,
    /// Protobuf, with gRPC's 5-byte prefix.
    pub encoded_bytes_per_gpu_sample: f64,
    /// Gzipped as tonic sends it, with gRPC's 5-byte prefix.
    pub gzip_bytes_per_gpu_sample: f64,
    /// Encoded size over gzipped size.
    pub gzip_ratio: f64,
}

/// What gzip makes of batches of 1, 5 and 10 consecutive snapshots of the same host.
pub fn by_batch_size(snapshots: &[v1::Snapshot], gpus: u32) -> Vec<BatchSize> {
    [1usize, 5, 10]
        .into_iter()
        .filter(|n| *n <= snapshots.len())
        .map(|n| {
            let (mut encoded, mut gzipped, mut batches) = (0u64, 0u64, 0u64);
            for (i, chunk) in snapshots.chunks_exact(n).enumerate() {
                let m = v1::AgentMessage {
                    msg: Some(v1::agent_message::Msg::Batch(v1::Batch {
                        seq: i as u64 + 1,
                        snapshots: chunk.to_vec(),
                        agent: Some(v1::AgentStats::default()),
                    })),
                };
                let s = Sizes::of(&m);
                encoded += s.encoded + GRPC_PREFIX_BYTES;
                gzipped += s.gzipped + GRPC_PREFIX_BYTES;
                batches += 1;
            }
            let samples = (batches * n as u64 * u64::from(gpus)) as f64;
            BatchSize {
                snapshots: n,
                encoded_bytes_per_gpu_sample: encoded as f64 / samples,
                gzip_bytes_per_gpu_sample: gzipped as f64 / samples,
                gzip_ratio: encoded as f64 / gzipped as f64,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetitive_bytes_gzip_small_and_the_member_has_its_header_and_trailer() {
        let text = vec![b'a'; 10_000];
        let n = gzip_len(&text);
        // 10-byte header, 8-byte trailer, a few bytes of deflate.
        assert!(n > 18 && n < 100, "{n}");
        assert_eq!(gzip_len(b""), 20);
    }
}
