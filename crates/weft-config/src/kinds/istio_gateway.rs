//! Istio `Gateway` (`networking.istio.io/v1`): the ports an ingress
//! gateway opens and the host names it serves there. Its `selector` picks
//! the gateway workloads (WorkloadEntries labelled `weft.dev/gateway:
//! "true"`, in any namespace, as Istio's selector does by default); the
//! `VirtualService`s that name it in `gateways` route its requests. It is
//! translated into the same gateway model as Gateway API's `Gateway`
//! (`translate_l7`), so one engine serves both.
//!
//! `servers[]`: `port` (`HTTP`, `HTTP2`, `GRPC` served as HTTP; `HTTPS`
//! terminating TLS; `TLS` with `tls.mode: PASSTHROUGH`; `TCP`), `hosts`
//! (`[namespace/]host`, `*.` wildcards; the namespace part limits which
//! namespaces' VirtualServices may bind: `*` any, `.` the Gateway's own),
//! `tls` (`SIMPLE`, `MUTUAL`, `OPTIONAL_MUTUAL` with `credentialName` — a
//! `kubernetes.io/tls` Secret in the gateway workload's namespace, `ca.crt`
//! in it or in `<credentialName>-cacert` for client certificates —,
//! `PASSTHROUGH`, and `httpsRedirect` on plain HTTP servers).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::diag::Ctx;
use crate::resource::Spec;

/// `spec` of an Istio `Gateway`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IstioGatewaySpec {
    /// Labels of the gateway workloads.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// What is served.
    #[serde(default)]
    pub servers: Vec<ServerSpec>,
}

/// `servers[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Port and protocol.
    pub port: ServerPortSpec,
    /// `[namespace/]host` served.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// TLS settings.
    pub tls: Option<ServerTlsSpec>,
    /// Name (informational).
    pub name: Option<String>,
}

/// `servers[].port`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerPortSpec {
    /// Port the gateway listens on.
    pub number: u32,
    /// Protocol.
    pub protocol: String,
    /// Name (informational).
    pub name: Option<String>,
}

/// `servers[].tls`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerTlsSpec {
    /// Plain HTTP answered with a 301 to `https`.
    #[serde(default)]
    pub https_redirect: bool,
    /// `SIMPLE` (default), `MUTUAL`, `OPTIONAL_MUTUAL`, `PASSTHROUGH`.
    pub mode: Option<String>,
    /// The Secret with the certificate (and `ca.crt` for client checks).
    pub credential_name: Option<String>,
}

/// How a server treats its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// HTTP, plain.
    Http,
    /// HTTP over TLS terminated here (client certificates: required,
    /// optional or not asked).
    Https(ClientCerts),
    /// TLS passed through by SNI.
    Passthrough,
    /// TCP passed through whole.
    Tcp,
}

/// Client certificate checking on an HTTPS server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// `SIMPLE`: none asked for.
    None,
    /// `MUTUAL`: required.
    Required,
    /// `OPTIONAL_MUTUAL`: checked when given.
    Optional,
}

impl ServerSpec {
    /// What the server does, or why it cannot be served.
    pub fn kind(&self) -> Result<ServerKind, String> {
        let protocol = self.port.protocol.to_ascii_uppercase();
        let mode = self
            .tls
            .as_ref()
            .and_then(|t| t.mode.as_deref())
            .map(str::to_ascii_uppercase);
        let has_tls_settings = self
            .tls
            .as_ref()
            .is_some_and(|t| t.mode.is_some() || t.credential_name.is_some());
        match protocol.as_str() {
            "HTTP" | "HTTP2" | "GRPC" if has_tls_settings => Err(format!(
                "a {protocol} server is plain; for TLS use protocol HTTPS (only tls.httpsRedirect applies here)"
            )),
            "HTTP" | "HTTP2" | "GRPC" => Ok(ServerKind::Http),
            "HTTPS" => match mode.as_deref() {
                None | Some("SIMPLE") => Ok(ServerKind::Https(ClientCerts::None)),
                Some("MUTUAL") => Ok(ServerKind::Https(ClientCerts::Required)),
                Some("OPTIONAL_MUTUAL") => Ok(ServerKind::Https(ClientCerts::Optional)),
                Some("PASSTHROUGH") => Ok(ServerKind::Passthrough),
                Some(other) => Err(unsupported_mode(other)),
            },
            "TLS" => match mode.as_deref() {
                Some("PASSTHROUGH") => Ok(ServerKind::Passthrough),
                Some(other @ ("ISTIO_MUTUAL" | "AUTO_PASSTHROUGH")) => Err(unsupported_mode(other)),
                _ => Err(
                    "weft passes TLS servers through unopened: set tls.mode: PASSTHROUGH (to terminate TLS for HTTP, use protocol HTTPS)"
                        .into(),
                ),
            },
            "TCP" if has_tls_settings => Err("a TCP server passes connections through as they are; it has no tls".into()),
            "TCP" => Ok(ServerKind::Tcp),
            other => Err(format!(
                "protocol {other:?} is not served by weft's gateway; use HTTP, HTTP2, GRPC, HTTPS, TLS (passthrough) or TCP"
            )),
        }
    }
}

fn unsupported_mode(mode: &str) -> String {
    match mode {
        "ISTIO_MUTUAL" => "ISTIO_MUTUAL is for Istio's sidecars; weft's gateway reaches the mesh over HBONE with its own identity: use SIMPLE, MUTUAL or OPTIONAL_MUTUAL".into(),
        "AUTO_PASSTHROUGH" => "AUTO_PASSTHROUGH (east-west gateways) is not supported yet".into(),
        other => format!("tls.mode {other:?} is not one of SIMPLE, MUTUAL, OPTIONAL_MUTUAL, PASSTHROUGH"),
    }
}

/// A server host split into its namespace scope and host name.
pub fn split_host(entry: &str) -> (Option<&str>, &str) {
    match entry.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None => (None, entry),
    }
}

const FILES: &str = "weft reads certificates from Secrets: use credentialName";

impl Spec for IstioGatewaySpec {
    const KIND: &'static str = "Gateway";
    const UNSUPPORTED: &'static [(&'static str, &'static str)] = &[
        (
            "spec.servers.bind",
            "the gateway listens on its workload's address",
        ),
        (
            "spec.servers.defaultEndpoint",
            "not supported by weft's gateway",
        ),
        (
            "spec.servers.port.targetPort",
            "weft's gateway listens on port.number itself",
        ),
        ("spec.servers.tls.serverCertificate", FILES),
        ("spec.servers.tls.privateKey", FILES),
        ("spec.servers.tls.caCertificates", FILES),
        (
            "spec.servers.tls.credentialNames",
            "name one Secret in credentialName",
        ),
        (
            "spec.servers.tls.subjectAltNames",
            "client certificates are checked against the CA only",
        ),
        (
            "spec.servers.tls.verifyCertificateSpki",
            "client certificates are checked against the CA only",
        ),
        (
            "spec.servers.tls.verifyCertificateHash",
            "client certificates are checked against the CA only",
        ),
        (
            "spec.servers.tls.minProtocolVersion",
            "weft's gateway speaks TLS 1.2 and 1.3 (rustls defaults)",
        ),
        (
            "spec.servers.tls.maxProtocolVersion",
            "weft's gateway speaks TLS 1.2 and 1.3 (rustls defaults)",
        ),
        (
            "spec.servers.tls.cipherSuites",
            "weft's gateway uses rustls' default cipher suites",
        ),
    ];

    fn validate(&self, ctx: &mut Ctx<'_>) {
        if self.selector.is_empty() {
            ctx.error(
                "spec.selector",
                "select the gateway workloads by their labels (e.g. istio: ingressgateway)",
            );
        }
        if self.servers.is_empty() {
            ctx.error("spec.servers", "add at least one server");
        }
        let mut protocols: BTreeMap<u32, &str> = BTreeMap::new();
        for (i, server) in self.servers.iter().enumerate() {
            let base = format!("spec.servers[{i}]");
            if !(1..=65535).contains(&server.port.number) {
                ctx.error(&format!("{base}.port.number"), "must be 1-65535");
            }
            match server.kind() {
                Ok(kind) => {
                    let class = match kind {
                        ServerKind::Http => "plain HTTP",
                        ServerKind::Https(_) => "HTTPS",
                        ServerKind::Passthrough => "TLS passthrough",
                        ServerKind::Tcp => "TCP",
                    };
                    if let Some(previous) = protocols.insert(server.port.number, class)
                        && previous != class
                    {
                        ctx.error(
                            &format!("{base}.port"),
                            format!(
                                "port {} already has a {previous} server; one port serves one protocol",
                                server.port.number
                            ),
                        );
                    }
                    let credential = server.tls.as_ref().and_then(|t| t.credential_name.as_ref());
                    if matches!(kind, ServerKind::Https(_)) && credential.is_none() {
                        ctx.error(
                            &format!("{base}.tls.credentialName"),
                            "an HTTPS server needs the kubernetes.io/tls Secret with its certificate",
                        );
                    }
                    if matches!(kind, ServerKind::Passthrough) && credential.is_some() {
                        ctx.error(
                            &format!("{base}.tls.credentialName"),
                            "a passthrough server holds no certificate: the backend terminates TLS",
                        );
                    }
                    if server.tls.as_ref().is_some_and(|t| t.https_redirect)
                        && kind != ServerKind::Http
                    {
                        ctx.error(
                            &format!("{base}.tls.httpsRedirect"),
                            "only plain HTTP servers redirect to HTTPS",
                        );
                    }
                }
                Err(e) => ctx.error(&format!("{base}.port.protocol"), e),
            }
            if server.hosts.is_empty() {
                ctx.error(
                    &format!("{base}.hosts"),
                    "name at least one host (\"*\" for any)",
                );
            }
            for (h, entry) in server.hosts.iter().enumerate() {
                let field = format!("{base}.hosts[{h}]");
                let (ns, host) = split_host(entry);
                if let Some(ns) = ns
                    && !matches!(ns, "*" | ".")
                    && weft_core::names::check_label(ns).is_err()
                {
                    ctx.error(
                        &field,
                        format!("{ns:?} is not a namespace, \"*\" or \".\" (in {entry:?})"),
                    );
                }
                let name = host.strip_prefix("*.").unwrap_or(host);
                if host != "*"
                    && let Err(e) = weft_core::names::check_hostname(name)
                {
                    ctx.error(&field, format!("{host:?} {e}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(protocol: &str, mode: Option<&str>) -> ServerSpec {
        ServerSpec {
            port: ServerPortSpec {
                number: 443,
                protocol: protocol.into(),
                name: None,
            },
            hosts: vec!["*".into()],
            tls: mode.map(|m| ServerTlsSpec {
                mode: Some(m.into()),
                ..Default::default()
            }),
            name: None,
        }
    }

    #[test]
    fn server_kinds_follow_protocol_and_tls_mode() {
        let cases: &[(&str, Option<&str>, Result<ServerKind, &str>)] = &[
            ("HTTP", None, Ok(ServerKind::Http)),
            ("http2", None, Ok(ServerKind::Http)),
            ("GRPC", None, Ok(ServerKind::Http)),
            ("HTTPS", None, Ok(ServerKind::Https(ClientCerts::None))),
            (
                "HTTPS",
                Some("SIMPLE"),
                Ok(ServerKind::Https(ClientCerts::None)),
            ),
            (
                "HTTPS",
                Some("MUTUAL"),
                Ok(ServerKind::Https(ClientCerts::Required)),
            ),
            (
                "HTTPS",
                Some("OPTIONAL_MUTUAL"),
                Ok(ServerKind::Https(ClientCerts::Optional)),
            ),
            ("HTTPS", Some("PASSTHROUGH"), Ok(ServerKind::Passthrough)),
            ("TLS", Some("PASSTHROUGH"), Ok(ServerKind::Passthrough)),
            ("TCP", None, Ok(ServerKind::Tcp)),
            ("TLS", Some("SIMPLE"), Err("set tls.mode: PASSTHROUGH")),
            (
                "HTTPS",
                Some("ISTIO_MUTUAL"),
                Err("ISTIO_MUTUAL is for Istio's sidecars"),
            ),
            ("TLS", Some("AUTO_PASSTHROUGH"), Err("east-west")),
            ("HTTP", Some("SIMPLE"), Err("use protocol HTTPS")),
            ("MONGO", None, Err("not served")),
        ];
        for (protocol, mode, want) in cases {
            let got = server(protocol, *mode).kind();
            match (want, &got) {
                (Ok(k), Ok(g)) => assert_eq!(k, g, "{protocol} {mode:?}"),
                (Err(needle), Err(e)) => assert!(e.contains(needle), "{protocol} {mode:?}: {e}"),
                _ => panic!("{protocol} {mode:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
