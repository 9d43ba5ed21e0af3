//! # weft-hbone
//!
//! HBONE, the tunnel every weft hop uses: an HTTP/2 `CONNECT` stream inside
//! a mutual-TLS connection to port 15008, with `:authority` the target
//! workload's `ip:port`. Wire-compatible with Istio ztunnel's HBONE (TLS
//! 1.3, ALPN `h2`, SPIFFE identities checked both ways, the same HTTP/2
//! tuning).
//!
//! - [`server`]: terminates mTLS, reads `CONNECT`s, asks an
//!   [`server::InboundHandler`] where to connect (or why not), answers 200 /
//!   400 / 401 / 503 and splices the bytes;
//! - [`client`]: a pool of mTLS HTTP/2 connections keyed by (source
//!   identity, destination address, expected destination identity), each
//!   carrying up to 100 streams;
//! - [`nested`]: double HBONE, an end-to-end tunnel inside one to an
//!   east-west gateway (the caller's side);
//! - [`stream`]: one tunnel as a byte stream, straight on the `h2`
//!   crate's stream halves; [`conn`]: the HTTP/2 settings and keepalive
//!   both ends share;
//! - [`splice`]: a socket to a tunnel, handing `h2` the chunks it reads
//!   and writing received frames straight out (no copy on the tunnel's
//!   side);
//! - [`copy`]: splices a tunnel to a socket both ways, with buffers that
//!   grow only for bulk flows, borrowed from [`buffers`] (a per-thread
//!   pool) only while bytes pass, so idle tunnels hold none.

#![forbid(unsafe_code)]

use std::time::Duration;

pub mod buffers;
pub mod client;
pub mod conn;
pub mod copy;
pub mod nested;
pub mod server;
pub mod splice;
pub mod stream;

pub use client::{Dial, HbonePool, PoolKey, Tunnel};
pub use server::{Inbound, InboundHandler, Refusal};

/// The HBONE port.
pub const PORT: u16 = 15008;
/// HTTP/2 stream window (4 MiB, as ztunnel).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 connection window (16 MiB, as ztunnel).
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// HTTP/2 maximum frame size (1 MiB, as ztunnel).
pub const MAX_FRAME: u32 = 1024 * 1024;
/// Streams one pooled client connection carries before another is opened.
pub const MAX_STREAMS_PER_CONNECTION: usize = 100;
/// HTTP/2 keepalive ping interval.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// HTTP/2 keepalive timeout.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
