//! The engine's side of extensions ([`crate::extension`]): a request's
//! [`Run`] through Proxy-Wasm plugins started from its target's chain,
//! each phase of plugins run where the engine's phase list puts it,
//! bodies wrapped, the response passed back through processors and
//! plugins, a [`Stop`] made an [`L7Error`]; and [`EngineDispatch`], which
//! carries out plugins' `proxy_http_call`s to the mesh's services through
//! the engine's own upstream client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body as _;
use weft_core::l7::PluginPhase;
use weft_wasm::{Attributes, CallResponse, HttpCall};

use crate::engine::Engine;
use crate::engine::config::Config;
use crate::engine::ctx::{Ctx, PeerAddr};
use crate::engine::error::L7Error;
use crate::engine::upstream::{Body, boxed};
use crate::extension::{Dispatch, PluginBody, Run, Stop};

/// Most of an HTTP call's answer a plugin is handed.
pub const MAX_CALL_RESPONSE: usize = 4 << 20;
/// The timeout of an HTTP call that names none.
pub const DEFAULT_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl From<Stop> for L7Error {
    fn from(stop: Stop) -> L7Error {
        match stop {
            Stop::Respond(r) => L7Error::ExtensionResponse(r),
            Stop::Fail { plugin, reason } => L7Error::PluginFailed { plugin, reason },
            Stop::ProcessorFailed { policy, reason } => L7Error::ExtProcFailed { policy, reason },
        }
    }
}

impl Engine {
    /// The request's pass through its target's plugins, if it has any.
    pub(crate) fn plugins_for(
        &self,
        ctx: &Ctx,
        config: &Config,
        request: &Request<Body>,
    ) -> Option<Run> {
        let chain = config.plugins.get(ctx.policy_key())?;
        let attributes = Attributes {
            source: request.extensions().get::<PeerAddr>().map(|p| p.0),
            peer_principal: ctx.record.source.as_ref().map(ToString::to_string),
            protocol: ctx.record.access.protocol,
            ..Attributes::default()
        };
        Run::start(chain, attributes)
    }

    /// The plugins of `phase` on the request's head.
    pub(crate) async fn plugin_phase(
        &self,
        run: Option<&Run>,
        phase: PluginPhase,
        parts: &mut Parts,
        end_of_stream: bool,
    ) -> Result<(), L7Error> {
        match run {
            Some(run) => Ok(run.request(phase, parts, end_of_stream).await?),
            None => Ok(()),
        }
    }

    /// The request body through the plugins that read it (its length may
    /// change, so `content-length` goes).
    pub(crate) fn plugin_request_body(
        &self,
        run: Option<&Run>,
        parts: &mut Parts,
        body: Body,
    ) -> Body {
        match run {
            Some(run) if run.reads_bodies(false) => {
                parts.headers.remove(http::header::CONTENT_LENGTH);
                boxed(PluginBody::new(body, run.clone(), false))
            }
            _ => body,
        }
    }

    /// The response back through the external processors (head now,
    /// body as it passes): one may change it or answer instead.
    pub(crate) async fn processor_response(
        &self,
        talk: &crate::extension::ext_proc::Conversation,
        response: Response<Body>,
    ) -> Response<Body> {
        let (mut parts, body) = response.into_parts();
        match talk.response(&mut parts, body).await {
            Ok(body) => Response::from_parts(parts, body),
            Err(stop) => L7Error::from(stop).response(),
        }
    }

    /// The response back through the plugins (head, then body): a plugin
    /// may change it, answer instead, or fail.
    pub(crate) async fn plugin_response(
        &self,
        run: &Run,
        response: Response<Body>,
    ) -> Response<Body> {
        let (mut parts, body) = response.into_parts();
        let end = body.is_end_stream();
        match run.response(&mut parts, end).await {
            Ok(()) => {}
            Err(stop) => return L7Error::from(stop).response(),
        }
        let body = if run.reads_bodies(true) {
            parts.headers.remove(http::header::CONTENT_LENGTH);
            boxed(PluginBody::new(body, run.clone(), true))
        } else {
            body
        };
        Response::from_parts(parts, body)
    }
}

/// Carries out plugins' HTTP calls through an engine: the upstream named
/// `host:port` (or Istio's `outbound|port||host`) is the mesh service of
/// that host name and port, one of its endpoints is chosen by its
/// balancer, and the call goes through the engine's upstream client (an
/// HBONE tunnel in a waypoint or gateway). No such service, no endpoint,
/// a failure or no answer within the call's timeout: the call failed.
#[derive(Debug, Clone)]
pub struct EngineDispatch(pub Weak<Engine>);

/// The host and port an HTTP call's upstream names.
pub fn call_target(upstream: &str) -> Option<(&str, u16)> {
    if let Some(rest) = upstream.strip_prefix("outbound|") {
        let mut parts = rest.split('|');
        let port = parts.next()?.parse().ok()?;
        let _subset = parts.next()?;
        let host = parts.next()?;
        return (!host.is_empty()).then_some((host, port));
    }
    let (host, port) = upstream.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

impl Dispatch for EngineDispatch {
    fn call(&self, call: HttpCall) -> Pin<Box<dyn Future<Output = Option<CallResponse>> + Send>> {
        let engine = self.0.clone();
        Box::pin(async move {
            let engine = engine.upgrade()?;
            let timeout = if call.timeout.is_zero() {
                DEFAULT_CALL_TIMEOUT
            } else {
                call.timeout
            };
            match tokio::time::timeout(timeout, engine.call_out(&call)).await {
                Ok(Ok(answer)) => Some(answer),
                Ok(Err(why)) => {
                    tracing::info!(upstream = %call.upstream, %why, "plugin HTTP call failed");
                    None
                }
                Err(_) => {
                    tracing::info!(upstream = %call.upstream, ?timeout, "plugin HTTP call timed out");
                    None
                }
            }
        })
    }
}

impl Engine {
    async fn call_out(&self, call: &HttpCall) -> Result<CallResponse, String> {
        use http_body_util::BodyExt;
        let (host, port) = call_target(&call.upstream)
            .ok_or_else(|| "the upstream is not host:port or outbound|port||host".to_owned())?;
        let config = self.current();
        let suffix = format!(":{port}");
        let cluster = config
            .clusters
            .values()
            .find(|c| c.label == host && c.name.ends_with(&suffix) && !c.name.contains('#'))
            .cloned()
            .ok_or_else(|| format!("no mesh service {host}:{port} known to this proxy"))?;
        let index = cluster
            .balancer
            .pick(fastrand::usize(..), fastrand::usize(..), None)
            .ok_or_else(|| format!("{} has no healthy endpoint", cluster.name))?;
        let endpoint = cluster.balancer.endpoints()[index].addr;
        let header = |name: &str| {
            call.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let bad = |e: &dyn std::fmt::Display| format!("the call's request: {e}");
        let path = header(":path").unwrap_or("/");
        let mut request = Request::new(boxed(http_body_util::Full::new(Bytes::from(
            call.body.clone(),
        ))));
        *request.method_mut() =
            http::Method::from_bytes(header(":method").unwrap_or("GET").as_bytes())
                .map_err(|e| bad(&e))?;
        *request.uri_mut() = format!("http://{endpoint}{path}")
            .parse()
            .map_err(|e| bad(&e))?;
        let headers = request.headers_mut();
        let authority = header(":authority").unwrap_or(host);
        headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(authority).map_err(|e| bad(&e))?,
        );
        for (k, v) in call.headers.iter().filter(|(k, _)| !k.starts_with(':')) {
            headers.append(
                http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| bad(&e))?,
                http::HeaderValue::from_str(v).map_err(|e| bad(&e))?,
            );
        }
        let response = self
            .client
            .request(request, cluster.http2)
            .await
            .map_err(|e| format!("{endpoint}: {e}"))?;
        let (parts, mut body) = response.into_parts();
        let mut answer = CallResponse::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading the answer: {e}"))?;
            match frame.into_data() {
                Ok(data) => {
                    if answer.body.len() + data.len() > MAX_CALL_RESPONSE {
                        return Err(format!("the answer is over {MAX_CALL_RESPONSE} bytes"));
                    }
                    answer.body.extend_from_slice(&data);
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        answer.trailers = t;
                    }
                }
            }
        }
        answer.head.status = parts.status;
        answer.head.headers = parts.headers;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_targets() {
        let table: &[(&str, Option<(&str, u16)>)] = &[
            (
                "auth.shop.svc.cluster.local:8080",
                Some(("auth.shop.svc.cluster.local", 8080)),
            ),
            (
                "outbound|9080||reviews.shop.svc.cluster.local",
                Some(("reviews.shop.svc.cluster.local", 9080)),
            ),
            ("outbound|9080|v1|reviews", Some(("reviews", 9080))),
            ("outbound|x||reviews", None),
            ("outbound|9080||", None),
            ("no-port", None),
        ];
        for (upstream, want) in table {
            assert_eq!(call_target(upstream), *want, "{upstream}");
        }
    }
}
