//! Downstream connections end to end on loopback: parking and warm
//! connections, split heads, header timeouts, pipelining, HTTP/2, TLS.

use std::sync::Arc;

use http_body_util::Full;
use tokio::net::TcpListener;

use super::*;
use crate::engine::upstream::boxed;

/// Answers "ok" to every request, counting it in `activity`.
fn ok(
    activity: Arc<Activity>,
) -> impl Fn(Request<Incoming>) -> Reply + Clone + Send + Sync + Unpin + 'static {
    move |_req: Request<Incoming>| -> Reply {
        let in_flight = activity.request();
        Box::pin(async move {
            let body = boxed(Full::new(Bytes::from_static(b"ok")));
            Ok(Response::new(Tracked::new(body, in_flight)))
        })
    }
}

/// Serves every connection on a loopback listener, answering "ok" to
/// each request; hyper's HTTP/1.1 header timeout is `header_timeout`.
async fn server(header_timeout: Duration) -> std::net::SocketAddr {
    server_with(header_timeout, WARM).await.0
}

/// Each connection's activity, in the order they came.
type Conns = Arc<std::sync::Mutex<Vec<Arc<Activity>>>>;

/// [`server`], warm for `warm`, with each connection's activity.
async fn server_with(header_timeout: Duration, warm: Duration) -> (std::net::SocketAddr, Conns) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let mut protocols = Protocols::default();
    protocols
        .h1
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    protocols.warm = warm;
    let protocols = Arc::new(protocols);
    let conns = Conns::default();
    let seen = conns.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            let protocols = protocols.clone();
            let activity = Arc::new(Activity::new());
            seen.lock().expect("lock").push(activity.clone());
            tokio::spawn(async move {
                let handle = ok(activity.clone());
                let never = std::future::pending::<()>();
                serve(stream, handle, &protocols, &activity, never, Duration::ZERO).await
            });
        }
    });
    (addr, conns)
}

/// Waits (up to 10 s) until connection `i` has been parked `times`.
async fn parked(conns: &Conns, i: usize, times: u64) {
    let activity = conns.lock().expect("lock")[i].clone();
    for _ in 0..500 {
        if activity.parked() >= times {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "connection {i} parked {} times, not {times}",
        activity.parked()
    );
}

/// Reads one response (head and a content-length body); `None` when
/// the server closed the connection first.
async fn response(stream: &mut (impl AsyncRead + Unpin)) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return Some(text);
            }
        }
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: app\r\n\r\n";

#[tokio::test]
async fn a_parked_connection_holds_a_small_task() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let tcp = TcpStream::connect(listener.local_addr().expect("local address"))
        .await
        .expect("connect");
    let activity = Activity::new();
    let handle = move |_req: Request<Incoming>| -> Reply { unreachable!() };
    let protocols = Protocols::default();
    let never = std::future::pending::<()>();
    let task = serve(tcp, handle, &protocols, &activity, never, Duration::ZERO);
    // hyper's connections are boxed while they serve; what stays is
    // the socket, the state of this loop and the caller's closure.
    let size = std::mem::size_of_val(&task);
    assert!(size < 1024, "a connection's task takes {size} bytes");
}

#[tokio::test]
async fn an_idle_connection_is_parked_and_serves_again() {
    // Unparked, hyper would close the idle connection when its header
    // timer (running while it waits for a head) fires at 300 ms.
    let addr = server(Duration::from_millis(300)).await;
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(GET).await.expect("write");
    let first = response(&mut c).await.expect("first response");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(!first.to_ascii_lowercase().contains("connection: close"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.write_all(GET).await.expect("write");
    let second = response(&mut c).await.expect("a parked connection answers");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
}

#[tokio::test]
async fn a_tls_connection_is_parked_and_serves_again() {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let server_tls = rustls::ServerConfig::builder_with_provider(weft_ca::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
        )
        .expect("server TLS");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = acceptor.accept(tcp).await.expect("handshake");
        let activity = Arc::new(Activity::new());
        let mut protocols = Protocols::default();
        protocols
            .h1
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_millis(300));
        let never = std::future::pending::<()>();
        let handle = ok(activity.clone());
        serve(tls, handle, &protocols, &activity, never, Duration::ZERO).await
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let client_tls = rustls::ClientConfig::builder_with_provider(weft_ca::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut c = tokio_rustls::TlsConnector::from(Arc::new(client_tls))
        .connect(name, tcp)
        .await
        .expect("client handshake");
    // Two requests in one write: the second waits in rustls or in
    // hyper when the first is answered.
    let mut two = GET.to_vec();
    two.extend_from_slice(GET);
    c.write_all(&two).await.expect("write");
    c.flush().await.expect("flush");
    let (mut all, mut buf) = (Vec::new(), [0u8; 1024]);
    while String::from_utf8_lossy(&all).matches("\r\n\r\nok").count() < 2 {
        let n = c.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&all));
        all.extend_from_slice(&buf[..n]);
    }
    // Past hyper's header timeout: answered only if it was parked.
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.write_all(GET).await.expect("write");
    c.flush().await.expect("flush");
    let got = response(&mut c)
        .await
        .expect("a parked TLS connection answers");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

/// A connection busy with requests keeps its hyper connection from one
/// to the next; idle past the warm time, it is parked, and serves
/// again. With no warm time, it is parked after every request.
#[tokio::test]
async fn a_busy_connection_stays_warm_and_an_idle_one_parks() {
    let (addr, conns) = server_with(Duration::from_secs(10), Duration::from_secs(1)).await;
    let mut c = TcpStream::connect(addr).await.expect("connect");
    for _ in 0..5 {
        c.write_all(GET).await.expect("write");
        response(&mut c).await.expect("response");
    }
    let activity = conns.lock().expect("lock")[0].clone();
    assert_eq!(activity.requests(), 5);
    assert_eq!(activity.parked(), 0, "parked between back-to-back requests");
    parked(&conns, 0, 1).await;
    c.write_all(GET).await.expect("write");
    let again = response(&mut c).await.expect("a parked connection answers");
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");

    let (addr, conns) = server_with(Duration::from_secs(10), Duration::ZERO).await;
    let mut c = TcpStream::connect(addr).await.expect("connect");
    for n in 1..=3 {
        c.write_all(GET).await.expect("write");
        response(&mut c).await.expect("response");
        parked(&conns, 0, n).await;
    }
}

#[tokio::test]
async fn heads_split_across_a_park_keep_the_connection() {
    let addr = server(Duration::from_secs(5)).await;
    let mut c = TcpStream::connect(addr).await.expect("connect");
    // A request and the start of the next in one write: hyper has read
    // part of a head when the connection parks, and hands it back.
    let mut first = GET.to_vec();
    first.extend_from_slice(&GET[..20]);
    c.write_all(&first).await.expect("write");
    response(&mut c).await.expect("first response");
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.write_all(&GET[20..]).await.expect("write");
    // Then a head split after a park: a fresh hyper connection reads
    // its start.
    for split in [true, false] {
        let got = response(&mut c).await.expect("the split request answered");
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(
            !got.to_ascii_lowercase().contains("connection: close"),
            "{got}"
        );
        if split {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.write_all(&GET[..20]).await.expect("write");
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.write_all(&GET[20..]).await.expect("write");
        }
    }
    c.write_all(GET).await.expect("write");
    response(&mut c).await.expect("still open");
}

#[tokio::test]
async fn a_stalled_head_still_meets_the_header_timeout() {
    let addr = server(Duration::from_millis(300)).await;
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(GET).await.expect("write");
    response(&mut c).await.expect("first response");
    c.write_all(&GET[..20]).await.expect("write");
    // Parking must not restart hyper's timer forever.
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        let mut buf = [0u8; 256];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a stalled head kept the connection open");
}

#[tokio::test]
async fn pipelined_requests_and_connection_close() {
    let addr = server(Duration::from_secs(5)).await;
    let mut c = TcpStream::connect(addr).await.expect("connect");
    let mut two = GET.to_vec();
    two.extend_from_slice(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n");
    c.write_all(&two).await.expect("write");
    let mut all = String::new();
    c.read_to_string(&mut all).await.expect("read");
    assert_eq!(all.matches("HTTP/1.1 200").count(), 2, "{all}");
}

#[tokio::test]
async fn http2_with_prior_knowledge() {
    let addr = server(Duration::from_secs(5)).await;
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    for _ in 0..2 {
        let request = Request::get("http://app/")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("h2 request");
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_2);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn stop_closes_a_parked_connection() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let mut c = TcpStream::connect(addr).await.expect("connect");
    let (stream, _) = listener.accept().await.expect("accept");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let activity = Arc::new(Activity::new());
        let handle = ok(activity.clone());
        let stop = async move {
            let _ = rx.await;
            "told"
        };
        let protocols = Protocols::default();
        serve(stream, handle, &protocols, &activity, stop, Duration::ZERO).await
    });
    c.write_all(GET).await.expect("write");
    response(&mut c).await.expect("first response");
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(()).expect("stop");
    assert!(matches!(
        server.await.expect("server task"),
        Ended::Stopped("told")
    ));
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.expect("read");
    assert!(rest.is_empty());
}
