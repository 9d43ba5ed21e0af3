//! `proxy_get_property`: the attributes of a stream under Envoy's names
//! (path segments joined by NUL), encoded as Envoy encodes them —
//! strings as bytes, integers as 64-bit little-endian, booleans as one
//! byte. A pure function of the [`Exchange`], so a table test pins every
//! name.

use std::net::SocketAddr;

#[cfg(test)]
use crate::state::Attributes;
use crate::state::Exchange;

fn int(n: i64) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

fn address(a: Option<SocketAddr>) -> Option<Vec<u8>> {
    a.map(|a| a.to_string().into_bytes())
}

/// The names a plugin is known by: its configuration's name (Envoy's
/// `plugin_name`) and the root id its code looks for (`plugin_root_id`,
/// Istio's `pluginName`).
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    /// `plugin_name`.
    pub plugin: &'a str,
    /// `plugin_root_id`.
    pub root_id: &'a str,
}

/// The property at `path` (segments joined by NUL) for the callback of
/// the plugin named `names` on `x`; `None`: not found.
pub fn property(path: &[u8], x: &Exchange, names: Names<'_>) -> Option<Vec<u8>> {
    let a = &x.attributes;
    if let Some((_, v)) = a.set.iter().rev().find(|(k, _)| k == path) {
        return Some(v.clone());
    }
    let path = std::str::from_utf8(path).ok()?;
    let mut segments = path.split('\0');
    let first = segments.next()?;
    let second = segments.next();
    let third = segments.next();
    let request = &x.request;
    let header = |map: &http::HeaderMap, name: &str| -> Option<Vec<u8>> {
        Some(map.get(name)?.as_bytes().to_vec())
    };
    let text = |s: &str| Some(s.as_bytes().to_vec());
    match (first, second, third) {
        ("request", Some("path"), None) => {
            text(request.uri.path_and_query().map_or("/", |p| p.as_str()))
        }
        ("request", Some("url_path"), None) => text(request.uri.path()),
        ("request", Some("host"), None) => {
            header(&request.headers, "host").or_else(|| text(request.uri.authority()?.as_str()))
        }
        ("request", Some("scheme"), None) => text(request.uri.scheme_str().unwrap_or("http")),
        ("request", Some("method"), None) => text(request.method.as_str()),
        ("request", Some("query"), None) => text(request.uri.query().unwrap_or("")),
        ("request", Some("protocol"), None) => text(a.protocol),
        ("request", Some("id"), None) => header(&request.headers, "x-request-id"),
        ("request", Some("referer"), None) => header(&request.headers, "referer"),
        ("request", Some("useragent"), None) => header(&request.headers, "user-agent"),
        ("request", Some("headers"), Some(name)) => header(&request.headers, name),
        ("response", Some("code"), None) if a.responded => {
            Some(int(i64::from(x.response.status.as_u16())))
        }
        ("response", Some("headers"), Some(name)) if a.responded => {
            header(&x.response.headers, name)
        }
        ("source", Some("address"), None) => address(a.source),
        ("source", Some("port"), None) => a.source.map(|s| int(i64::from(s.port()))),
        ("destination", Some("address"), None) => address(a.destination),
        ("destination", Some("port"), None) => a.destination.map(|s| int(i64::from(s.port()))),
        ("upstream", Some("address"), None) => address(a.upstream),
        ("upstream", Some("port"), None) => a.upstream.map(|s| int(i64::from(s.port()))),
        ("connection", Some("mtls"), None) => Some(vec![u8::from(a.peer_principal.is_some())]),
        ("connection", Some("uri_san_peer_certificate"), None) => {
            text(a.peer_principal.as_deref()?)
        }
        ("connection", Some("uri_san_local_certificate"), None) => {
            text(a.local_principal.as_deref()?)
        }
        ("route_name", None, None) | ("xds", Some("route_name"), None) => {
            text(a.route_name.as_deref()?)
        }
        ("cluster_name", None, None) | ("xds", Some("cluster_name"), None) => {
            text(a.cluster_name.as_deref()?)
        }
        ("plugin_name", None, None) => text(names.plugin),
        ("plugin_root_id", None, None) => text(names.root_id),
        ("plugin_vm_id", None, None) => text(""),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange() -> Exchange {
        let mut x = Exchange::default();
        x.request.method = http::Method::POST;
        x.request.uri = "/orders?id=7".parse().expect("valid");
        x.request
            .headers
            .insert("host", http::HeaderValue::from_static("shop:8080"));
        x.request
            .headers
            .insert("x-request-id", http::HeaderValue::from_static("r-1"));
        x.attributes = Attributes {
            source: Some("10.0.0.1:40000".parse().expect("valid")),
            destination: Some("10.0.0.2:8080".parse().expect("valid")),
            peer_principal: Some("spiffe://cluster.local/ns/a/sa/frontend".into()),
            protocol: "HTTP/2",
            route_name: Some("orders".into()),
            ..Attributes::default()
        };
        x
    }

    #[test]
    fn envoy_names_and_encodings() {
        let x = exchange();
        let names = Names {
            plugin: "p1",
            root_id: "root",
        };
        let get = |p: &str| property(p.replace('.', "\0").as_bytes(), &x, names);
        let s = |v: &str| Some(v.as_bytes().to_vec());
        let table: &[(&str, Option<Vec<u8>>)] = &[
            ("request.path", s("/orders?id=7")),
            ("request.url_path", s("/orders")),
            ("request.query", s("id=7")),
            ("request.host", s("shop:8080")),
            ("request.method", s("POST")),
            ("request.scheme", s("http")),
            ("request.protocol", s("HTTP/2")),
            ("request.id", s("r-1")),
            ("request.headers.x-request-id", s("r-1")),
            ("request.headers.absent", None),
            ("source.address", s("10.0.0.1:40000")),
            ("source.port", Some(40000i64.to_le_bytes().to_vec())),
            ("destination.port", Some(8080i64.to_le_bytes().to_vec())),
            ("connection.mtls", Some(vec![1])),
            (
                "connection.uri_san_peer_certificate",
                s("spiffe://cluster.local/ns/a/sa/frontend"),
            ),
            ("connection.uri_san_local_certificate", None),
            ("route_name", s("orders")),
            ("xds.route_name", s("orders")),
            ("plugin_name", s("p1")),
            ("plugin_root_id", s("root")),
            ("response.code", None),
            ("no.such.thing", None),
        ];
        for (path, want) in table {
            assert_eq!(&get(path), want, "{path}");
        }
    }

    const NAMES: Names<'static> = Names {
        plugin: "p",
        root_id: "p",
    };

    #[test]
    fn response_and_set_properties() {
        let mut x = exchange();
        x.attributes.responded = true;
        x.response.status = http::StatusCode::NOT_FOUND;
        x.attributes.set.push((b"my\0key".to_vec(), b"v".to_vec()));
        assert_eq!(
            property(b"response\0code", &x, NAMES),
            Some(404i64.to_le_bytes().to_vec())
        );
        assert_eq!(property(b"my\0key", &x, NAMES), Some(b"v".to_vec()));
        x.attributes.peer_principal = None;
        assert_eq!(property(b"connection\0mtls", &x, NAMES), Some(vec![0]));
    }
}
