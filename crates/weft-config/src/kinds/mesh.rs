//! `weft.dev/v1alpha1` `Mesh`: mesh-wide settings — trust domain, default
//! mutual-TLS mode, what to do with traffic to unknown destinations, and
//! the connect timeout. At most one per configuration; cluster-scoped.

use serde::Deserialize;
use weft_core::duration;
use weft_core::identity::check_trust_domain;

use crate::diag::Ctx;
use crate::resource::Spec;

/// `spec` of a `Mesh`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    /// SPIFFE trust domain (default `cluster.local`).
    pub trust_domain: Option<String>,
    /// Default mutual-TLS settings for inbound traffic.
    pub mtls: Option<MtlsSpec>,
    /// Handling of outbound traffic to destinations not in the registry.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicySpec>,
    /// TCP connect timeout to endpoints, e.g. `5s` (default `10s`).
    pub connect_timeout: Option<String>,
    /// Authorizers CUSTOM `AuthorizationPolicy` rules name (the shape of
    /// Istio's MeshConfig field).
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProviderSpec>,
    /// Providers used by default (Istio's MeshConfig field): `tracing`
    /// names an `opentelemetry` provider.
    pub default_providers: Option<DefaultProvidersSpec>,
    /// Trace sampling (weft; Istio sets it in a `Telemetry` resource).
    pub tracing: Option<TracingSpec>,
    /// How gateways and waypoints normalize request paths (Istio's
    /// MeshConfig field).
    pub path_normalization: Option<PathNormalizationSpec>,
    /// This cluster's ID (Istio's `topology.istio.io/cluster`), for the
    /// workloads that do not carry the label; on Kubernetes the control
    /// plane's `--cluster-id` when unset here.
    pub cluster: Option<String>,
    /// This cluster's default network (`topology.istio.io/network`), for
    /// the workloads that set neither `spec.network` nor the label.
    pub network: Option<String>,
}

/// `spec.pathNormalization` (Istio's shape).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PathNormalizationSpec {
    /// `NONE`, `BASE` (default), `MERGE_SLASHES` or
    /// `DECODE_AND_MERGE_SLASHES`.
    pub normalization: Option<String>,
}

/// `spec.defaultProviders`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct DefaultProvidersSpec {
    /// Tracing providers (weft uses the first).
    #[serde(default)]
    pub tracing: Vec<String>,
}

/// `spec.tracing`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// Percentage of new traces sampled, 0-100 (default 1, as Istio).
    pub random_sampling_percentage: Option<f64>,
}

/// `opentelemetry` (Istio's shape): an OTLP collector.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct OpenTelemetrySpec {
    /// Host name or IP.
    pub service: String,
    /// Port.
    pub port: u16,
    /// Present: OTLP over HTTP; absent: OTLP over gRPC.
    pub http: Option<OtlpHttpSpec>,
}

/// `opentelemetry.http`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct OtlpHttpSpec {
    /// Path (default `/v1/traces`).
    pub path: Option<String>,
}

/// `spec.extensionProviders[]`: exactly one of the provider fields.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProviderSpec {
    /// Referred to by `AuthorizationPolicy.spec.provider.name`.
    pub name: String,
    /// Envoy's ext_authz over gRPC.
    pub envoy_ext_authz_grpc: Option<ExtAuthzGrpcSpec>,
    /// Envoy's ext_authz over plain HTTP.
    pub envoy_ext_authz_http: Option<ExtAuthzHttpSpec>,
    /// weft's built-in API-key check.
    pub api_key: Option<ApiKeySpec>,
    /// An OpenTelemetry (OTLP) trace collector.
    pub opentelemetry: Option<OpenTelemetrySpec>,
}

/// `envoyExtAuthzGrpc`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthzGrpcSpec {
    /// Host name or IP the proxies dial directly.
    pub service: String,
    /// Its port.
    pub port: u16,
    /// Bound on one check (default `1s`).
    pub timeout: Option<String>,
    /// Allow when the authorizer cannot answer.
    #[serde(default)]
    pub fail_open: bool,
    /// Status when failing closed (default `403`).
    pub status_on_error: Option<String>,
}

/// `envoyExtAuthzHttp`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthzHttpSpec {
    /// Host name or IP the proxies dial directly.
    pub service: String,
    /// Its port.
    pub port: u16,
    /// Bound on one check (default `1s`).
    pub timeout: Option<String>,
    /// Prepended to the checked path.
    pub path_prefix: Option<String>,
    /// Allow when the authorizer cannot answer.
    #[serde(default)]
    pub fail_open: bool,
    /// Status when failing closed (default `403`).
    pub status_on_error: Option<String>,
    /// Request headers sent to the authorizer.
    #[serde(default)]
    pub include_request_headers_in_check: Vec<String>,
    /// Authorizer headers added to the upstream request on allow.
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<String>,
    /// Authorizer headers sent to the client on deny.
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
}

/// `apiKey` (weft): keys hashed at rest in a Secret.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySpec {
    /// The Secret (`namespace/name`, or a name in `weft-system`) whose
    /// entries are `<client>: sha256:<hex>`.
    pub secret: String,
    /// Header carrying the key (default `x-api-key`).
    pub header: Option<String>,
    /// Query parameter carrying the key (none by default).
    pub query: Option<String>,
    /// Header the client's name goes upstream in (default
    /// `x-weft-api-client`).
    pub client_header: Option<String>,
}

/// `statusOnError`: a status code in 200..=599, as text (Istio's shape).
pub fn parse_status(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(code) if (200..=599).contains(&code) => Ok(code),
        _ => Err(format!("{s:?} is not an HTTP status code (200-599)")),
    }
}

/// `spec.mtls`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct MtlsSpec {
    /// `STRICT` (default) or `PERMISSIVE`.
    pub mode: Option<MtlsModeSpec>,
}

/// `spec.mtls.mode`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum MtlsModeSpec {
    /// Only mutual TLS.
    #[serde(rename = "STRICT")]
    Strict,
    /// Mutual TLS and plaintext.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
}

/// `spec.outboundTrafficPolicy` (the shape of Istio's MeshConfig field).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct OutboundTrafficPolicySpec {
    /// `ALLOW_ANY` (default) or `REGISTRY_ONLY`.
    pub mode: Option<OutboundModeSpec>,
}

/// `spec.outboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum OutboundModeSpec {
    /// Unknown destinations pass through.
    #[serde(rename = "ALLOW_ANY")]
    AllowAny,
    /// Unknown destinations are refused.
    #[serde(rename = "REGISTRY_ONLY")]
    RegistryOnly,
}

impl Spec for MeshSpec {
    const KIND: &'static str = "Mesh";
    const NAMESPACED: bool = false;

    fn validate(&self, ctx: &mut Ctx<'_>) {
        if let Some(mode) = self
            .path_normalization
            .as_ref()
            .and_then(|p| p.normalization.as_deref())
            && weft_core::model::PathNormalization::parse(mode).is_none()
        {
            ctx.error(
                "spec.pathNormalization.normalization",
                format!(
                    "{mode:?} is not a normalization; use one of {}",
                    weft_core::model::PathNormalization::NAMES.join(", ")
                ),
            );
        }
        for (field, value) in [
            ("spec.cluster", &self.cluster),
            ("spec.network", &self.network),
        ] {
            if let Some(v) = value {
                ctx.check(field, weft_core::names::check_label_value(v));
            }
        }
        if let Some(td) = &self.trust_domain {
            ctx.check(
                "spec.trustDomain",
                check_trust_domain(td).map_err(|e| e.to_string()),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, p) in self.extension_providers.iter().enumerate() {
            let base = format!("spec.extensionProviders[{i}]");
            if p.name.is_empty() {
                ctx.error(&format!("{base}.name"), "required");
            } else if !names.insert(p.name.as_str()) {
                ctx.error(
                    &format!("{base}.name"),
                    format!("{:?} is declared twice", p.name),
                );
            }
            let kinds = [
                p.envoy_ext_authz_grpc.is_some(),
                p.envoy_ext_authz_http.is_some(),
                p.api_key.is_some(),
                p.opentelemetry.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                ctx.error(
                    &base,
                    "give exactly one of envoyExtAuthzGrpc, envoyExtAuthzHttp, apiKey, opentelemetry",
                );
            }
            if let Some(o) = &p.opentelemetry {
                if o.service.is_empty() {
                    ctx.error(
                        &format!("{base}.opentelemetry.service"),
                        "required: the collector's host name or IP",
                    );
                }
                if o.port == 0 {
                    ctx.error(&format!("{base}.opentelemetry.port"), "required");
                }
            }
            let mut common = |kind: &str,
                              service: &str,
                              port: u16,
                              timeout: &Option<String>,
                              status: &Option<String>| {
                if service.is_empty() {
                    ctx.error(
                        &format!("{base}.{kind}.service"),
                        "required: the authorizer's host name or IP",
                    );
                }
                if port == 0 {
                    ctx.error(&format!("{base}.{kind}.port"), "required");
                }
                if let Some(t) = timeout {
                    match duration::parse(t) {
                        Ok(d) if d.is_zero() => ctx.error(
                            &format!("{base}.{kind}.timeout"),
                            "must be greater than zero",
                        ),
                        Ok(_) => {}
                        Err(e) => ctx.error(&format!("{base}.{kind}.timeout"), e),
                    }
                }
                if let Some(s) = status
                    && let Err(e) = parse_status(s)
                {
                    ctx.error(&format!("{base}.{kind}.statusOnError"), e);
                }
            };
            if let Some(g) = &p.envoy_ext_authz_grpc {
                common(
                    "envoyExtAuthzGrpc",
                    &g.service,
                    g.port,
                    &g.timeout,
                    &g.status_on_error,
                );
            }
            if let Some(h) = &p.envoy_ext_authz_http {
                common(
                    "envoyExtAuthzHttp",
                    &h.service,
                    h.port,
                    &h.timeout,
                    &h.status_on_error,
                );
            }
            if let Some(k) = &p.api_key
                && k.secret.is_empty()
            {
                ctx.error(
                    &format!("{base}.apiKey.secret"),
                    "required: the Secret holding the key hashes",
                );
            }
        }
        if let Some(p) = self
            .tracing
            .as_ref()
            .and_then(|t| t.random_sampling_percentage)
            && !(0.0..=100.0).contains(&p)
        {
            ctx.error(
                "spec.tracing.randomSamplingPercentage",
                "must be between 0 and 100",
            );
        }
        for (i, name) in self
            .default_providers
            .iter()
            .flat_map(|d| d.tracing.iter())
            .enumerate()
        {
            match self.extension_providers.iter().find(|p| &p.name == name) {
                Some(p) if p.opentelemetry.is_some() => {}
                Some(_) => ctx.error(
                    &format!("spec.defaultProviders.tracing[{i}]"),
                    format!("{name:?} is not an opentelemetry provider"),
                ),
                None => ctx.error(
                    &format!("spec.defaultProviders.tracing[{i}]"),
                    format!("no extension provider {name:?}"),
                ),
            }
        }
        if let Some(timeout) = &self.connect_timeout {
            match duration::parse(timeout) {
                Ok(d) if d.is_zero() => {
                    ctx.error("spec.connectTimeout", "must be greater than zero")
                }
                Ok(_) => {}
                Err(e) => ctx.error("spec.connectTimeout", e),
            }
        }
    }
}
