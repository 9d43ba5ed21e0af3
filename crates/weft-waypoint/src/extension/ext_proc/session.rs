//! One request's gRPC stream with one processor ([`Session`]): opened on
//! the first message, each message answered within the message timeout
//! and checked to be the answer its kind expects; the processing mode in
//! force, which the processor may override.

use std::sync::Arc;
use std::time::Duration;

use weft_core::l7::{BodyMode, ExtProc};
use weft_wasm::LocalResponse;

use super::mutate::immediate;
use super::proto;
use super::proto::processing_request::Request as Sent;
use super::proto::processing_response::Response as Answer;
use crate::telemetry::extensions::ExtensionMetrics;

/// The generated client over a tonic channel.
type Client = proto::external_processor_client::ExternalProcessorClient<tonic::transport::Channel>;

/// A processor as the configuration names it, with its (lazily
/// connected) channel.
pub struct Processor {
    /// What the policy says.
    pub spec: ExtProc,
    pub(crate) client: Result<Client, String>,
    pub(crate) metrics: ExtensionMetrics,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Processor({})", self.spec.name)
    }
}

impl Processor {
    /// A processor for `spec` (its channel connects on first use).
    pub fn new(spec: ExtProc, metrics: ExtensionMetrics) -> Processor {
        let client = tonic::transport::Endpoint::from_shared(format!("http://{}", spec.address))
            .map(|e| {
                proto::external_processor_client::ExternalProcessorClient::new(
                    e.connect_timeout(Duration::from_secs(2)).connect_lazy(),
                )
            })
            .map_err(|e| format!("processor address {}: {e}", spec.address));
        Processor {
            spec,
            client,
            metrics,
        }
    }
}

/// What is sent for the rest of a request (the policy's mode, as the
/// processor may override it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mode {
    pub(crate) request_headers: bool,
    pub(crate) response_headers: bool,
    pub(crate) request_body: BodyMode,
    pub(crate) response_body: BodyMode,
    pub(crate) request_trailers: bool,
    pub(crate) response_trailers: bool,
}

impl Mode {
    pub(crate) fn of(spec: &ExtProc) -> Mode {
        Mode {
            request_headers: spec.request_headers,
            response_headers: spec.response_headers,
            request_body: spec.request_body,
            response_body: spec.response_body,
            request_trailers: spec.request_trailers,
            response_trailers: spec.response_trailers,
        }
    }

    /// The mode `over` sets, whole, as Envoy replaces it (`DEFAULT`
    /// sends headers and skips trailers; `BUFFERED_PARTIAL` is read as
    /// `BUFFERED`).
    pub(crate) fn overridden(over: &proto::ProcessingMode) -> Mode {
        let send = |v: i32, default: bool| match v {
            1 => true,
            2 => false,
            _ => default,
        };
        let body = |v: i32| match v {
            1 => BodyMode::Streamed,
            2 | 3 => BodyMode::Buffered,
            _ => BodyMode::None,
        };
        Mode {
            request_headers: send(over.request_header_mode, true),
            response_headers: send(over.response_header_mode, true),
            request_body: body(over.request_body_mode),
            response_body: body(over.response_body_mode),
            request_trailers: send(over.request_trailer_mode, false),
            response_trailers: send(over.response_trailer_mode, false),
        }
    }
}

/// One request's stream with one processor.
pub(crate) struct Session {
    pub(crate) processor: Arc<Processor>,
    pub(crate) mode: Mode,
    pub(crate) stream: Option<(
        tokio::sync::mpsc::Sender<proto::ProcessingRequest>,
        tonic::Streaming<proto::ProcessingResponse>,
    )>,
    /// Not asked again: it closed the stream, answered immediately, or
    /// failed open.
    pub(crate) done: bool,
}

/// What one message's answer says to do.
pub(crate) enum Reply {
    /// Go on with this common response (mutations).
    Go(Option<proto::CommonResponse>),
    /// Trailers' mutation.
    Trailers(Option<proto::HeaderMutation>),
    /// Answer the client with this.
    Immediate(LocalResponse),
}

impl Session {
    /// Sends `sent` and waits for its answer; `Ok(None)`: the processor
    /// closed the stream (go on without it).
    async fn ask(&mut self, sent: Sent) -> Result<Option<proto::ProcessingResponse>, String> {
        let timeout = self.processor.spec.message_timeout;
        let message = proto::ProcessingRequest {
            request: Some(sent),
            observability_mode: false,
        };
        if self.stream.is_none() {
            let mut client = self.processor.client.clone()?;
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(message)
                .await
                .map_err(|_| "the stream closed".to_owned())?;
            let opened = tokio::time::timeout(
                timeout,
                client.process(tokio_stream::wrappers::ReceiverStream::new(rx)),
            )
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
            self.stream = Some((tx, opened.into_inner()));
        } else if let Some((tx, _)) = &self.stream {
            tx.send(message)
                .await
                .map_err(|_| "the stream closed".to_owned())?;
        }
        let Some((_, responses)) = &mut self.stream else {
            return Err("no stream".into());
        };
        match tokio::time::timeout(timeout, responses.message()).await {
            Err(_) => Err(format!("no answer within {timeout:?}")),
            Ok(Err(s)) => Err(format!("{}: {}", s.code(), s.message())),
            Ok(Ok(answer)) => Ok(answer),
        }
    }

    /// Asks, checks the answer is the one expected for `sent`'s kind, and
    /// applies `mode_override`.
    pub(crate) async fn exchange(&mut self, sent: Sent) -> Result<Option<Reply>, String> {
        let kind = kind(&sent);
        let Some(answer) = self.ask(sent).await? else {
            self.done = true;
            return Ok(None);
        };
        if let (Some(over), true, true) = (
            &answer.mode_override,
            self.processor.spec.allow_mode_override,
            matches!(kind, Kind::RequestHeaders | Kind::ResponseHeaders),
        ) {
            self.mode = Mode::overridden(over);
        }
        let reply = match (kind, answer.response) {
            (_, Some(Answer::ImmediateResponse(i))) => {
                self.done = true;
                Reply::Immediate(immediate(&i))
            }
            (Kind::RequestHeaders, Some(Answer::RequestHeaders(h)))
            | (Kind::ResponseHeaders, Some(Answer::ResponseHeaders(h))) => Reply::Go(h.response),
            (Kind::RequestBody, Some(Answer::RequestBody(b)))
            | (Kind::ResponseBody, Some(Answer::ResponseBody(b))) => Reply::Go(b.response),
            (Kind::RequestTrailers, Some(Answer::RequestTrailers(t)))
            | (Kind::ResponseTrailers, Some(Answer::ResponseTrailers(t))) => {
                Reply::Trailers(t.header_mutation)
            }
            (kind, other) => {
                return Err(format!(
                    "answered {} to {kind:?}",
                    other.as_ref().map_or("nothing", answer_name)
                ));
            }
        };
        Ok(Some(reply))
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    RequestHeaders,
    ResponseHeaders,
    RequestBody,
    ResponseBody,
    RequestTrailers,
    ResponseTrailers,
}

fn kind(sent: &Sent) -> Kind {
    match sent {
        Sent::RequestHeaders(_) => Kind::RequestHeaders,
        Sent::ResponseHeaders(_) => Kind::ResponseHeaders,
        Sent::RequestBody(_) => Kind::RequestBody,
        Sent::ResponseBody(_) => Kind::ResponseBody,
        Sent::RequestTrailers(_) => Kind::RequestTrailers,
        Sent::ResponseTrailers(_) => Kind::ResponseTrailers,
    }
}

fn answer_name(a: &Answer) -> &'static str {
    match a {
        Answer::RequestHeaders(_) => "request_headers",
        Answer::ResponseHeaders(_) => "response_headers",
        Answer::RequestBody(_) => "request_body",
        Answer::ResponseBody(_) => "response_body",
        Answer::RequestTrailers(_) => "request_trailers",
        Answer::ResponseTrailers(_) => "response_trailers",
        Answer::ImmediateResponse(_) => "immediate_response",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_and_its_overrides() {
        let spec = ExtProc {
            name: "p".into(),
            address: "a:1".into(),
            request_headers: true,
            response_headers: true,
            request_body: BodyMode::None,
            response_body: BodyMode::None,
            request_trailers: false,
            response_trailers: false,
            message_timeout: Duration::from_millis(200),
            fail_open: false,
            allow_mode_override: true,
            listeners: vec![],
        };
        assert!(Mode::of(&spec).request_headers);
        let m = Mode::overridden(&proto::ProcessingMode {
            response_header_mode: 2,
            response_body_mode: 2,
            ..Default::default()
        });
        assert!(m.request_headers && !m.response_headers);
        assert_eq!(m.response_body, BodyMode::Buffered);
        assert_eq!(m.request_body, BodyMode::None);
    }
}
