//! Bytes from a hostile client of a gateway or waypoint, as an HTTP/1.1 or
//! HTTP/2 (prior knowledge) connection through hyper's server into weft's
//! engine: normalization, authentication, authorization, rate limits and
//! routing run; the route answers itself (a fault abort), so no upstream
//! is needed. Nothing may panic or hang.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use weft_waypoint::engine::route::{Fault, Route};
use weft_waypoint::{Config, Engine, Metrics};

fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let deny_host = weft_core::l7::L7Authz {
                policy: "shop/no-partner".into(),
                action: weft_core::l7::AuthzAction::Deny,
                rules: vec![weft_core::l7::L7AuthzRule {
                    to: vec![weft_core::l7::L7Operation {
                        hosts: vec!["partner.example".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            let config = Config {
                routes: vec![Route {
                    name: "abort".into(),
                    fault: Some(Fault {
                        delay: None,
                        abort: Some((100.0, 418)),
                    }),
                    ..Route::default()
                }],
                authz: HashMap::from([(String::new(), Arc::new(vec![deny_host]))]),
                internal_headers: vec![http::HeaderName::from_static("x-weft-api-client")],
                ..Config::default()
            };
            Arc::new(Engine::new(config, Metrics::default()))
        })
        .clone()
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let engine = engine();
    runtime().block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let service = service_fn(move |req| {
            let engine = engine.clone();
            async move { Ok::<_, std::convert::Infallible>(engine.handle(req).await) }
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection(TokioIo::new(server), service);
        let feed = async {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            // Read whatever comes back, so the server never blocks on a
            // full pipe.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            tokio::join!(conn, feed)
        })
        .await;
    });
});
