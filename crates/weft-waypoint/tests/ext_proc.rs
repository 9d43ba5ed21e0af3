//! External processing (Envoy's `ext_proc`) in `weft gateway`, end to
//! end in one process: an `ExtProcPolicy` per listener of a Gateway, and a
//! processor written here (tonic, the `ExternalProcessor/Process` bidi
//! stream) that adds and removes request headers, answers a request
//! itself when asked to, wraps the request body and upper-cases the
//! response body (the sample app's `/echo` sends the body back):
//!
//! - port A: headers and whole bodies (`BUFFERED`) both ways;
//! - port D: bodies chunk by chunk (`STREAMED`), response headers skipped;
//! - port B: a processor that is down, failing closed (500);
//! - port C: the same, failing open (the request passes untouched).

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt};
use weft_testkit::{TestMesh, app};
use weft_waypoint::extension::ext_proc::proto;

mod support;

const GATEWAY_IP: &str = "127.0.1.230";
const PORT_A: u16 = 18380;
const PORT_B: u16 = 18381;
const PORT_C: u16 = 18382;
const PORT_D: u16 = 18383;

/// The processor.
struct Processor;

fn set(key: &str, value: &str) -> proto::HeaderValueOption {
    proto::HeaderValueOption {
        header: Some(proto::HeaderValue {
            key: key.into(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        append_action: 2,
    }
}

fn common(
    set_headers: Vec<proto::HeaderValueOption>,
    remove: Vec<String>,
    body: Option<Vec<u8>>,
) -> Option<proto::CommonResponse> {
    Some(proto::CommonResponse {
        status: 0,
        header_mutation: Some(proto::HeaderMutation {
            set_headers,
            remove_headers: remove,
        }),
        body_mutation: body.map(|b| proto::BodyMutation {
            mutation: Some(proto::body_mutation::Mutation::Body(b)),
        }),
        clear_route_cache: false,
    })
}

/// The answer to one message.
fn answer(request: proto::ProcessingRequest) -> proto::ProcessingResponse {
    use proto::processing_request::Request as In;
    use proto::processing_response::Response as Out;
    let header = |h: &proto::HttpHeaders, name: &str| {
        h.headers.as_ref().and_then(|m| {
            m.headers
                .iter()
                .find(|v| v.key == name)
                .map(|v| String::from_utf8_lossy(&v.raw_value).into_owned())
        })
    };
    let response = match request.request {
        Some(In::RequestHeaders(h)) => {
            if header(&h, "x-block").is_some() {
                Out::ImmediateResponse(proto::ImmediateResponse {
                    status: Some(proto::HttpStatus { code: 451 }),
                    headers: Some(proto::HeaderMutation {
                        set_headers: vec![set("x-blocked-by", "processor")],
                        remove_headers: vec![],
                    }),
                    body: b"blocked by processor\n".to_vec(),
                    grpc_status: None,
                    details: "blocked".into(),
                })
            } else {
                let path = header(&h, ":path").unwrap_or_default();
                Out::RequestHeaders(proto::HeadersResponse {
                    response: common(
                        vec![set("x-processed", "yes"), set("x-saw-path", &path)],
                        vec!["x-secret".into()],
                        None,
                    ),
                })
            }
        }
        Some(In::ResponseHeaders(h)) => {
            let status = header(&h, ":status").unwrap_or_default();
            Out::ResponseHeaders(proto::HeadersResponse {
                response: common(vec![set("x-upstream-status", &status)], vec![], None),
            })
        }
        Some(In::RequestBody(b)) => {
            let body = (!b.body.is_empty()).then(|| [b"[", &b.body[..], b"]"].concat());
            Out::RequestBody(proto::BodyResponse {
                response: common(vec![], vec![], body),
            })
        }
        Some(In::ResponseBody(b)) => Out::ResponseBody(proto::BodyResponse {
            response: common(vec![], vec![], Some(b.body.to_ascii_uppercase())),
        }),
        Some(In::RequestTrailers(_)) => Out::RequestTrailers(proto::TrailersResponse::default()),
        Some(In::ResponseTrailers(_)) => Out::ResponseTrailers(proto::TrailersResponse::default()),
        None => Out::RequestHeaders(proto::HeadersResponse::default()),
    };
    proto::ProcessingResponse {
        response: Some(response),
        mode_override: None,
    }
}

type Answers = Pin<Box<dyn Stream<Item = Result<proto::ProcessingResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl proto::external_processor_server::ExternalProcessor for Processor {
    type ProcessStream = Answers;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<proto::ProcessingRequest>>,
    ) -> Result<tonic::Response<Answers>, tonic::Status> {
        let mut incoming = request.into_inner();
        let out = async_stream(move |tx| async move {
            while let Some(Ok(message)) = incoming.next().await {
                if tx.send(Ok(answer(message))).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(out))
    }
}

/// A stream fed by a task.
fn async_stream<F, Fut>(run: F) -> Answers
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<proto::ProcessingResponse, tonic::Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(run(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn config(processor: std::net::SocketAddr, closed: u16) -> String {
    let policy = |name: &str, listener: &str, address: String, extra: &str| {
        format!(
            r#"---
apiVersion: weft.dev/v1alpha1
kind: ExtProcPolicy
metadata: {{name: {name}, namespace: shop}}
spec:
  targetRefs: [{{kind: Gateway, name: edge, sectionName: {listener}}}]
  address: "{address}"
  messageTimeout: 1s
{extra}"#
        )
    };
    let mut yaml = support::edge_to_backend(
        "240.240.9.31",
        "127.0.1.231",
        GATEWAY_IP,
        &[("a", PORT_A), ("b", PORT_B), ("c", PORT_C), ("d", PORT_D)],
    );
    yaml.push_str(&policy(
        "buffered",
        "a",
        processor.to_string(),
        "  processingMode: {requestBody: BUFFERED, responseBody: BUFFERED}\n",
    ));
    yaml.push_str(&policy(
        "streamed",
        "d",
        processor.to_string(),
        "  processingMode: {requestBody: STREAMED, responseHeaders: SKIP, responseBody: STREAMED}\n",
    ));
    yaml.push_str(&policy(
        "down-closed",
        "b",
        format!("127.0.0.1:{closed}"),
        "",
    ));
    yaml.push_str(&policy(
        "down-open",
        "c",
        format!("127.0.0.1:{closed}"),
        "  failOpen: true\n",
    ));
    yaml
}

/// One request on `port`: status, headers and body.
async fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> (u16, http::HeaderMap, String) {
    let tcp = TcpStream::connect((GATEWAY_IP, port))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "edge.example.com");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = sender
        .send_request(req.body(Full::new(Bytes::from(body))).expect("request"))
        .await
        .expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_mutates_headers_and_bodies_answers_and_fails_by_its_mode() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let processor = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::external_processor_server::ExternalProcessorServer::new(Processor))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mesh = TestMesh::start(&config(processor, closed), 1).await;
    app("127.0.1.231:8080", "backend").await;
    let gateway =
        weft_waypoint::fronts::gateway::start(support::options(&mesh, "shop/edge", GATEWAY_IP))
            .await
            .expect("gateway");

    // Ready once the processor answers: the backend sees its header.
    let started = Instant::now();
    loop {
        let (status, _, body) = send(PORT_A, "GET", "/headers", &[], "").await;
        // (Port A upper-cases response bodies.)
        if status == 200 && body.to_ascii_lowercase().contains("x-processed") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the processor never ran: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Headers: one added, one removed; the response's headers seen too.
    let (status, headers, body) =
        send(PORT_A, "GET", "/headers", &[("x-secret", "s3cret")], "").await;
    assert_eq!(status, 200);
    let seen = body.to_ascii_lowercase();
    assert!(
        seen.contains("x-processed") && seen.contains("x-saw-path"),
        "{body}"
    );
    assert!(!seen.contains("s3cret"), "x-secret removed: {body}");
    assert_eq!(
        headers.get("x-upstream-status").map(|v| v.as_bytes()),
        Some(&b"200"[..])
    );

    // Bodies, whole: the request's wrapped, the response's upper-cased.
    let (status, _, body) = send(PORT_A, "POST", "/echo", &[], "hello processor").await;
    assert_eq!((status, body.as_str()), (200, "[HELLO PROCESSOR]"));

    // An immediate response.
    let (status, headers, body) = send(PORT_A, "GET", "/headers", &[("x-block", "1")], "").await;
    assert_eq!((status, body.as_str()), (451, "blocked by processor\n"));
    assert_eq!(
        headers.get("x-blocked-by").map(|v| v.as_bytes()),
        Some(&b"processor"[..])
    );

    // Bodies chunk by chunk; response headers not sent.
    let (status, headers, body) = send(PORT_D, "POST", "/echo", &[], "streamed").await;
    assert_eq!((status, body.as_str()), (200, "[STREAMED]"));
    assert!(headers.get("x-upstream-status").is_none());

    // Down: fails closed with 500, or open.
    let (status, _, body) = send(PORT_B, "GET", "/headers", &[], "").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("shop/down-closed"), "{body}");
    let (status, _, body) = send(PORT_C, "GET", "/headers", &[], "").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("x-processed"), "{body}");

    gateway.stop();
    mesh.stop().await;
}
