//! Raw TCP echo mode.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weft_sample_app::{AppError, serve_tcp_echo};

const HANG_GUARD: Duration = Duration::from_secs(30);

async fn start() -> (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<Result<(), AppError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_tcp_echo(listener, async {
        let _ = rx.await;
    }));
    (addr, tx, task)
}

#[tokio::test]
async fn echoes_bytes_back() {
    let (addr, _shutdown, _task) = start().await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    for message in [&b"hello"[..], b"weft", b"\x00\xffbinary"] {
        stream.write_all(message).await.expect("write");
        let mut buf = vec![0u8; message.len()];
        tokio::time::timeout(HANG_GUARD, stream.read_exact(&mut buf))
            .await
            .expect("read hung")
            .expect("read");
        assert_eq!(buf, message);
    }
}

#[tokio::test]
async fn half_close_flushes_everything_then_closes() {
    let (addr, _shutdown, _task) = start().await;
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let mut payload = vec![0u8; 512 * 1024];
    fastrand::Rng::with_seed(11).fill(&mut payload);

    let to_send = payload.clone();
    let write = async move {
        writer.write_all(&to_send).await.expect("write");
        writer.shutdown().await.expect("half-close");
        writer
    };
    let read = async move {
        let mut received = Vec::new();
        reader
            .read_to_end(&mut received)
            .await
            .expect("read to EOF");
        received
    };
    let (_writer, received) = tokio::time::timeout(HANG_GUARD, async { tokio::join!(write, read) })
        .await
        .expect("echo hung");
    assert_eq!(received.len(), payload.len());
    assert!(received == payload, "echoed bytes differ");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_returns() {
    let (addr, shutdown, task) = start().await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");

    shutdown.send(()).expect("server running");
    // The open connection still works until its client closes it.
    stream.write_all(b"pong").await.expect("write");
    stream.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"pong");
    drop(stream);

    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("serve_tcp_echo did not return")
        .expect("task panicked")
        .expect("clean stop");
    assert!(TcpStream::connect(addr).await.is_err());
}
