//! Graceful shutdown of the HTTP server.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{
    ChunkBody, HANG_GUARD, PROTOS, TestServer, client, client_with, get, wait_until_refused,
};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use weft_sample_app::AppConfig;

#[tokio::test]
async fn shutdown_returns_and_refuses_new_connections() {
    for proto in PROTOS {
        let server = TestServer::start(AppConfig::default()).await;
        let addr = server.addr;
        // Leave an idle keep-alive connection in the client's pool: it must
        // not keep the server from returning.
        let client = client(proto);
        let (parts, _) = get(&client, server.uri("/healthz")).await;
        assert_eq!(parts.status, StatusCode::OK);

        server.stop().await.expect("clean stop");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "{proto:?}: connection accepted after shutdown"
        );
    }
}

#[tokio::test]
async fn in_flight_requests_finish_during_shutdown() {
    for proto in PROTOS {
        let mut server = TestServer::start(AppConfig::default()).await;
        let client = client_with::<ChunkBody>(proto);
        let (tx, body) = ChunkBody::new();
        let req = Request::post(server.uri("/echo"))
            .body(body)
            .expect("request");
        tx.send(Bytes::from_static(b"before shutdown, "))
            .await
            .expect("send");
        // The response head proves the request is being served.
        let response = tokio::time::timeout(HANG_GUARD, client.request(req))
            .await
            .expect("response head hung")
            .expect("request failed");
        assert_eq!(response.status(), StatusCode::OK);

        server.trigger_shutdown();
        // Once the listener is closed the server has signalled shutdown to
        // its connections; the request is still in flight.
        wait_until_refused(server.addr).await;
        assert!(
            !server.is_finished(),
            "{proto:?}: returned with a request in flight"
        );

        tx.send(Bytes::from_static(b"after shutdown"))
            .await
            .expect("send");
        drop(tx);
        let body = tokio::time::timeout(HANG_GUARD, response.into_body().collect())
            .await
            .expect("body hung")
            .expect("in-flight request was cut off")
            .to_bytes();
        assert_eq!(body, "before shutdown, after shutdown", "{proto:?}");

        let addr = server.addr;
        server.stop().await.expect("clean stop");
        assert!(TcpStream::connect(addr).await.is_err(), "{proto:?}");
    }
}
