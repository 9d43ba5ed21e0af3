//! External processors (Envoy's `ext_proc`): one bidirectional gRPC
//! stream per request and processor (`ExternalProcessor/Process`), over
//! which the proxy sends what the policy's processing mode names — the
//! request's headers, body (buffered whole, or streamed chunk by chunk)
//! and trailers, then the response's — and waits, each time within the
//! message timeout, for the answer: header and body mutations, or an
//! immediate response that answers the client instead.
//!
//! A processor that cannot be reached, answers out of turn, fails the
//! stream or is too slow has failed: `failOpen` lets the request go on
//! without it, otherwise the request fails with 500 (Envoy's behaviour);
//! failures are counted in `weft_ext_proc_errors_total`. A processor that
//! closes the stream cleanly is not asked again for that request.
//! Header mutations may not touch `:method`, `:authority`, `:scheme` or
//! `host` (ignored, as in Envoy); mutations sent in answer to body
//! messages change only the body.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::Mutex;
use weft_core::l7::BodyMode;

use crate::extension::stream::Stop;

mod mutate;
mod session;

pub use mutate::mutate;
pub use session::Processor;

use mutate::{header_map, mutate_body};
use session::{Mode, Reply, Session};

/// The generated client and server of the subset weft speaks.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto;

use proto::processing_request::Request as Sent;

/// Most of a body sent whole (`BUFFERED`).
pub const MAX_BUFFERED_BODY: usize = 1 << 20;

/// Why a body could not pass.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body, whatever produced it.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// One request's conversation with its target's processors.
#[derive(Clone)]
pub struct Conversation {
    sessions: Arc<Vec<Mutex<Session>>>,
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conversation")
    }
}

impl Conversation {
    /// A conversation with `processors` (none: `None`).
    pub fn start(processors: &[Arc<Processor>]) -> Option<Conversation> {
        (!processors.is_empty()).then(|| Conversation {
            sessions: Arc::new(
                processors
                    .iter()
                    .map(|p| {
                        Mutex::new(Session {
                            processor: p.clone(),
                            mode: Mode::of(&p.spec),
                            stream: None,
                            done: false,
                        })
                    })
                    .collect(),
            ),
        })
    }

    /// A processor failed: skipped from now on (fail open) or the
    /// request stops.
    fn failed(session: &mut Session, why: String) -> Result<(), Stop> {
        let spec = &session.processor.spec;
        let decision = if spec.fail_open { "allowed" } else { "denied" };
        session
            .processor
            .metrics
            .processor_error(&spec.name, decision);
        tracing::warn!(policy = %spec.name, error = %why, fail_open = spec.fail_open, "external processor failed; its failure mode decides");
        session.done = true;
        if spec.fail_open {
            Ok(())
        } else {
            Err(Stop::ProcessorFailed {
                policy: spec.name.clone(),
                reason: why,
            })
        }
    }

    /// The request's head through every processor that wants it, then
    /// its body (and trailers) through those that want them.
    pub async fn request(
        &self,
        parts: &mut http::request::Parts,
        body: Body,
    ) -> Result<Body, Stop> {
        let end = http_body::Body::is_end_stream(&body);
        for session in self.sessions.iter() {
            let mut s = session.lock().await;
            if s.done || !s.mode.request_headers {
                continue;
            }
            let path = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let authority = parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let scheme = parts.uri.scheme_str().unwrap_or("http").to_owned();
            let sent = Sent::RequestHeaders(proto::HttpHeaders {
                headers: Some(header_map(
                    &[
                        (":authority", &authority),
                        (":path", &path),
                        (":method", parts.method.as_str()),
                        (":scheme", &scheme),
                    ],
                    &parts.headers,
                )),
                end_of_stream: end,
            });
            match s.exchange(sent).await {
                Ok(Some(Reply::Immediate(r))) => return Err(Stop::Respond(r)),
                Ok(Some(Reply::Go(common))) => {
                    if let Some(m) = common.as_ref().and_then(|c| c.header_mutation.as_ref()) {
                        for (k, v) in mutate(&mut parts.headers, m) {
                            if k == ":path"
                                && let Ok(p) = http::uri::PathAndQuery::try_from(v.as_slice())
                            {
                                let mut uri = parts.uri.clone().into_parts();
                                uri.path_and_query = Some(p);
                                if let Ok(u) = http::Uri::from_parts(uri) {
                                    parts.uri = u;
                                }
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(why) => Self::failed(&mut s, why)?,
            }
        }
        let mut body = body;
        for i in 0..self.sessions.len() {
            let (mode, trailers, done) = {
                let s = self.sessions[i].lock().await;
                (s.mode.request_body, s.mode.request_trailers, s.done)
            };
            if done || (mode == BodyMode::None && !trailers) {
                continue;
            }
            if mode != BodyMode::None {
                parts.headers.remove(http::header::CONTENT_LENGTH);
            }
            body = self.body(i, body, false, mode, trailers);
        }
        Ok(body)
    }

    /// The response's head through every processor that wants it (last
    /// first), then its body and trailers. A processor's immediate
    /// response, or a failure that fails closed, replaces the response.
    pub async fn response(
        &self,
        parts: &mut http::response::Parts,
        body: Body,
    ) -> Result<Body, Stop> {
        let end = http_body::Body::is_end_stream(&body);
        for session in self.sessions.iter().rev() {
            let mut s = session.lock().await;
            if s.done || !s.mode.response_headers {
                continue;
            }
            let status = parts.status.as_u16().to_string();
            let sent = Sent::ResponseHeaders(proto::HttpHeaders {
                headers: Some(header_map(&[(":status", &status)], &parts.headers)),
                end_of_stream: end,
            });
            match s.exchange(sent).await {
                Ok(Some(Reply::Immediate(r))) => return Err(Stop::Respond(r)),
                Ok(Some(Reply::Go(common))) => {
                    if let Some(m) = common.as_ref().and_then(|c| c.header_mutation.as_ref()) {
                        for (k, v) in mutate(&mut parts.headers, m) {
                            if k == ":status"
                                && let Some(s) = std::str::from_utf8(&v)
                                    .ok()
                                    .and_then(|v| v.parse::<u16>().ok())
                                    .and_then(|v| http::StatusCode::from_u16(v).ok())
                            {
                                parts.status = s;
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(why) => Self::failed(&mut s, why)?,
            }
        }
        let mut body = body;
        for i in (0..self.sessions.len()).rev() {
            let (mode, trailers, done) = {
                let s = self.sessions[i].lock().await;
                (s.mode.response_body, s.mode.response_trailers, s.done)
            };
            if done || (mode == BodyMode::None && !trailers) {
                continue;
            }
            if mode != BodyMode::None {
                parts.headers.remove(http::header::CONTENT_LENGTH);
            }
            body = self.body(i, body, true, mode, trailers);
        }
        Ok(body)
    }

    /// `body` through processor `i`, by a task that reads it, asks, and
    /// passes on what the processor left (`BUFFERED`: the whole body at
    /// once; `STREAMED`: each chunk; trailers when sent). A failure that
    /// fails closed ends the body with an error.
    fn body(
        &self,
        i: usize,
        mut body: Body,
        response: bool,
        mode: BodyMode,
        trailers: bool,
    ) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(4);
        let sessions = self.sessions.clone();
        tokio::spawn(async move {
            let session = &sessions[i];
            let send_body = |chunk: Bytes, end: bool| {
                let b = proto::HttpBody {
                    body: chunk.to_vec(),
                    end_of_stream: end,
                };
                if response {
                    Sent::ResponseBody(b)
                } else {
                    Sent::RequestBody(b)
                }
            };
            let mut held = Vec::new();
            let mut ended = false;
            loop {
                let frame = body.frame().await;
                let (data, trailer, end) = match frame {
                    None => (None, None, true),
                    Some(Err(e)) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) => {
                            let end = http_body::Body::is_end_stream(&body);
                            (Some(d), None, end)
                        }
                        Err(f) => (None, f.into_trailers().ok(), true),
                    },
                };
                let mut passing = data.unwrap_or_default();
                let mut s = session.lock().await;
                if !s.done && !ended {
                    match mode {
                        BodyMode::Buffered => {
                            held.extend_from_slice(&passing);
                            passing = Bytes::new();
                            if held.len() > MAX_BUFFERED_BODY {
                                let why = format!("the body is over {MAX_BUFFERED_BODY} bytes");
                                if let Err(stop) = Self::failed(&mut s, why) {
                                    let _ = tx.send(Err(stop_error(stop))).await;
                                    return;
                                }
                                passing = Bytes::from(std::mem::take(&mut held));
                            } else if end {
                                ended = true;
                                let whole = Bytes::from(std::mem::take(&mut held));
                                match s.exchange(send_body(whole.clone(), true)).await {
                                    Ok(Some(Reply::Go(c))) => {
                                        passing = mutate_body(whole, c.as_ref())
                                    }
                                    Ok(Some(Reply::Immediate(_))) => {
                                        let _ = tx
                                            .send(Err(
                                                "the processor answered while the body was passing"
                                                    .into(),
                                            ))
                                            .await;
                                        return;
                                    }
                                    Ok(_) => passing = whole,
                                    Err(why) => match Self::failed(&mut s, why) {
                                        Ok(()) => passing = whole,
                                        Err(stop) => {
                                            let _ = tx.send(Err(stop_error(stop))).await;
                                            return;
                                        }
                                    },
                                }
                            }
                        }
                        BodyMode::Streamed if !passing.is_empty() || (end && trailer.is_none()) => {
                            ended = end;
                            match s.exchange(send_body(passing.clone(), end)).await {
                                Ok(Some(Reply::Go(c))) => {
                                    passing = mutate_body(passing, c.as_ref())
                                }
                                Ok(Some(Reply::Immediate(_))) => {
                                    let _ = tx
                                        .send(Err(
                                            "the processor answered while the body was passing"
                                                .into(),
                                        ))
                                        .await;
                                    return;
                                }
                                Ok(_) => {}
                                Err(why) => {
                                    if let Err(stop) = Self::failed(&mut s, why) {
                                        let _ = tx.send(Err(stop_error(stop))).await;
                                        return;
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
                let mut trailer = trailer;
                if let (Some(t), true, false) = (&mut trailer, trailers, s.done) {
                    let map = header_map(&[], t);
                    let sent = if response {
                        Sent::ResponseTrailers(proto::HttpTrailers {
                            trailers: Some(map),
                        })
                    } else {
                        Sent::RequestTrailers(proto::HttpTrailers {
                            trailers: Some(map),
                        })
                    };
                    match s.exchange(sent).await {
                        Ok(Some(Reply::Trailers(Some(m)))) => {
                            mutate(t, &m);
                        }
                        Ok(_) => {}
                        Err(why) => {
                            if let Err(stop) = Self::failed(&mut s, why) {
                                let _ = tx.send(Err(stop_error(stop))).await;
                                return;
                            }
                        }
                    }
                }
                drop(s);
                if !passing.is_empty()
                    && tx.send(Ok(http_body::Frame::data(passing))).await.is_err()
                {
                    return;
                }
                if let Some(t) = trailer {
                    let _ = tx.send(Ok(http_body::Frame::trailers(t))).await;
                    return;
                }
                if end {
                    return;
                }
            }
        });
        http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
    }
}

fn stop_error(stop: Stop) -> BoxError {
    match stop {
        Stop::Fail {
            plugin: name,
            reason,
        }
        | Stop::ProcessorFailed {
            policy: name,
            reason,
        } => format!("{name}: {reason}").into(),
        Stop::Respond(r) => format!("answered {}", r.status).into(),
    }
}
