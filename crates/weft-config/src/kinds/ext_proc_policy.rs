//! `weft.dev/v1alpha1` `ExtProcPolicy`: an external processor speaking
//! Envoy's `ext_proc` protocol (`envoy.service.ext_proc.v3`), asked by the
//! waypoint of each Service it targets, or by the Gateway it targets,
//! about every request: it sees the parts its `processingMode` names and
//! may change headers and bodies or answer the request itself. Several
//! policies on one target are asked in name order, after authorization.
//!
//! ```yaml
//! apiVersion: weft.dev/v1alpha1
//! kind: ExtProcPolicy
//! metadata: {name: redact, namespace: shop}
//! spec:
//!   targetRefs: [{kind: Service, name: reviews}]
//!   address: 10.0.0.9:9002
//!   processingMode: {requestBody: BUFFERED, responseHeaders: SKIP}
//!   messageTimeout: 200ms
//!   failOpen: false
//! ```

use serde::Deserialize;

use crate::diag::Ctx;
use crate::kinds::http_route::RefSpec;
use crate::resource::Spec;

/// `spec` of an `ExtProcPolicy`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExtProcPolicySpec {
    /// The Services and Gateways whose requests the processor sees.
    #[serde(default)]
    pub target_refs: Vec<RefSpec>,
    /// The processor's gRPC address, `host:port` (plain gRPC).
    #[serde(default)]
    pub address: String,
    /// What it is sent.
    #[serde(default)]
    pub processing_mode: ProcessingModeSpec,
    /// Longest wait for each answer (default `200ms`, as Envoy's).
    pub message_timeout: Option<String>,
    /// Let requests through when the processor fails (default: 500).
    #[serde(default)]
    pub fail_open: bool,
    /// The processor may change the mode for the rest of a request.
    #[serde(default)]
    pub allow_mode_override: bool,
}

/// `processingMode`: Envoy's names.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProcessingModeSpec {
    /// `SEND` (default) or `SKIP`.
    pub request_headers: Option<String>,
    /// `SEND` (default) or `SKIP`.
    pub response_headers: Option<String>,
    /// `NONE` (default), `STREAMED` or `BUFFERED`.
    pub request_body: Option<String>,
    /// `NONE` (default), `STREAMED` or `BUFFERED`.
    pub response_body: Option<String>,
    /// `SKIP` (default) or `SEND`.
    pub request_trailers: Option<String>,
    /// `SKIP` (default) or `SEND`.
    pub response_trailers: Option<String>,
}

impl ProcessingModeSpec {
    /// Each field with its name and value.
    fn fields(&self) -> [(&'static str, Option<&str>, bool); 6] {
        [
            ("requestHeaders", self.request_headers.as_deref(), false),
            ("responseHeaders", self.response_headers.as_deref(), false),
            ("requestBody", self.request_body.as_deref(), true),
            ("responseBody", self.response_body.as_deref(), true),
            ("requestTrailers", self.request_trailers.as_deref(), false),
            ("responseTrailers", self.response_trailers.as_deref(), false),
        ]
    }
}

impl Spec for ExtProcPolicySpec {
    const KIND: &'static str = "ExtProcPolicy";

    fn validate(&self, ctx: &mut Ctx<'_>) {
        if self.target_refs.is_empty() {
            ctx.error(
                "spec.targetRefs",
                "name the Services or Gateways whose requests the processor sees",
            );
        }
        for (i, target) in self.target_refs.iter().enumerate() {
            let kind = target.kind.as_deref().unwrap_or("Service");
            if !matches!(kind, "Service" | "ServiceEntry" | "Gateway") {
                ctx.error(
                    &format!("spec.targetRefs[{i}].kind"),
                    format!("{kind:?}: a processor attaches to a Service, ServiceEntry or Gateway"),
                );
            }
        }
        match self.address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => ctx.error(
                "spec.address",
                format!(
                    "{:?}: the processor's gRPC address as host:port",
                    self.address
                ),
            ),
        }
        for (name, value, body) in self.processing_mode.fields() {
            let Some(v) = value else { continue };
            let ok = if body {
                matches!(v, "NONE" | "STREAMED" | "BUFFERED")
            } else {
                matches!(v, "SEND" | "SKIP")
            };
            if !ok {
                let allowed = if body {
                    "NONE, STREAMED or BUFFERED (BUFFERED_PARTIAL, FULL_DUPLEX_STREAMED and GRPC are not supported)"
                } else {
                    "SEND or SKIP"
                };
                ctx.error(
                    &format!("spec.processingMode.{name}"),
                    format!("{v:?}: {allowed}"),
                );
            }
        }
        if let Some(t) = &self.message_timeout {
            match weft_core::duration::parse(t) {
                Ok(d) if d.is_zero() => {
                    ctx.error("spec.messageTimeout", "must be greater than zero")
                }
                Ok(_) => {}
                Err(e) => ctx.error("spec.messageTimeout", e),
            }
        }
    }
}
