//! The route model every API family (Gateway API `HTTPRoute`, Istio
//! `VirtualService`) is translated into, and route selection as a pure
//! function from the request's method, path and headers to a [`Route`].

use std::time::Duration;

use http::{HeaderMap, Method, Uri};

use crate::engine::retry::RetryPolicy;

/// How a path is matched.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A prefix, on segment boundaries (`/api` matches `/api/x`, not
    /// `/apix`): Gateway API's `PathPrefix`.
    Prefix(String),
    /// A plain string prefix: Istio's `uri.prefix`.
    StringPrefix(String),
    /// A regular expression over the whole path.
    Regex(regex::Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                path.strip_prefix(p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathMatch::StringPrefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex(r) => full_match(r, path),
        }
    }
}

fn full_match(r: &regex::Regex, s: &str) -> bool {
    r.find(s)
        .is_some_and(|m| m.start() == 0 && m.len() == s.len())
}

/// How a header value is matched.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Matches the whole value.
    Regex(regex::Regex),
}

impl ValueMatch {
    fn matches(&self, value: &[u8]) -> bool {
        let Ok(value) = std::str::from_utf8(value) else {
            return false;
        };
        match self {
            ValueMatch::Exact(v) => value == v,
            ValueMatch::Prefix(p) => value.starts_with(p.as_str()),
            ValueMatch::Regex(r) => full_match(r, value),
        }
    }
}

/// A header condition.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// Header name (lowercase).
    pub name: String,
    /// The condition on its value (any of its values may satisfy it).
    pub value: ValueMatch,
}

/// One set of conditions; all must hold.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Path condition.
    pub path: Option<PathMatch>,
    /// Method condition.
    pub method: Option<Method>,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions: (name, condition on its value).
    pub query: Vec<(String, ValueMatch)>,
}

impl RouteMatch {
    fn matches(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        let params = || {
            uri.query()
                .unwrap_or_default()
                .split('&')
                .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        };
        self.path.as_ref().is_none_or(|p| p.matches(uri.path()))
            && self.query.iter().all(|(name, value)| {
                params().any(|(k, v)| k == name && value.matches(v.as_bytes()))
            })
            && self.method.as_ref().is_none_or(|m| m == method)
            && self.headers.iter().all(|h| {
                headers
                    .get_all(h.name.as_str())
                    .iter()
                    .any(|v| h.value.matches(v.as_bytes()))
            })
    }
}

/// A backend and its share of traffic.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The service (`namespace/hostname`) traffic goes to.
    pub service: String,
    /// Relative weight.
    pub weight: u32,
}

/// Header changes (Gateway API `RequestHeaderModifier` /
/// `ResponseHeaderModifier`, Istio `headers.request/response`).
#[derive(Debug, Clone, Default)]
pub struct HeaderChanges {
    /// Replace (or add) these.
    pub set: Vec<(String, String)>,
    /// Add these, keeping existing values.
    pub add: Vec<(String, String)>,
    /// Remove these.
    pub remove: Vec<String>,
}

impl HeaderChanges {
    /// Applies the changes: remove, then set, then add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        use http::header::{HeaderName, HeaderValue};
        for name in &self.remove {
            headers.remove(name.as_str());
        }
        let parsed = |(k, v): &(String, String)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        };
        for (k, v) in self.set.iter().filter_map(parsed) {
            headers.insert(k, v);
        }
        for (k, v) in self.add.iter().filter_map(parsed) {
            headers.append(k, v);
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Fault injection (Istio `fault`): delays and aborts by percentage.
#[derive(Debug, Clone, Default)]
pub struct Fault {
    /// (percent of requests, delay).
    pub delay: Option<(f64, Duration)>,
    /// (percent of requests, HTTP status returned).
    pub abort: Option<(f64, u16)>,
}

/// A redirect answered by the proxy itself.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// New scheme (`http`/`https`); default: the request's (`http`).
    pub scheme: Option<String>,
    /// New host; default: the request's.
    pub host: Option<String>,
    /// New port.
    pub port: Option<u16>,
    /// New path; default: the request's.
    pub path: Option<String>,
    /// 301 or 302 (also 303, 307, 308).
    pub status: u16,
}

/// Rewrites before forwarding.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Replace this path prefix with that one.
    pub prefix: Option<(String, String)>,
    /// Replace the whole path.
    pub full_path: Option<String>,
    /// Replace the `host` header (authority).
    pub host: Option<String>,
}

impl Rewrite {
    /// The rewritten path (query kept by the caller).
    pub fn path(&self, path: &str) -> String {
        if let Some(full) = &self.full_path {
            return full.clone();
        }
        match &self.prefix {
            Some((from, to)) => replace_prefix(path, from, to),
            None => path.to_owned(),
        }
    }
}

/// Gateway API `ReplacePrefixMatch`: the matched prefix `from` (a trailing
/// slash ignored) is replaced by `to` (likewise) at a path-element
/// boundary, so exactly one `/` separates the new prefix from the rest —
/// `/p//x` with prefix `/p` and `/` becomes `//x`, never `/x` (a path
/// that policy on the original request did not see). A prefix that ends
/// mid-element (Istio's string prefixes) is replaced as written.
pub fn replace_prefix(path: &str, from: &str, to: &str) -> String {
    let Some(rest) = path.strip_prefix(from.trim_end_matches('/')) else {
        return path.to_owned();
    };
    if !rest.is_empty() && !rest.starts_with('/') {
        return format!("{to}{rest}");
    }
    let out = format!("{}{rest}", to.trim_end_matches('/'));
    if out.starts_with('/') {
        out
    } else {
        format!("/{out}")
    }
}

/// Copies of requests sent to another service; responses ignored.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// The service copies go to.
    pub service: String,
    /// Share of requests copied, in percent.
    pub percent: f64,
}

/// One route.
#[derive(Debug, Clone, Default)]
pub struct Route {
    /// Name, for logs and metrics.
    pub name: String,
    /// Any one of these must hold; empty matches every request.
    pub matches: Vec<RouteMatch>,
    /// Where traffic goes, by weight.
    pub backends: Vec<Backend>,
    /// Overall request timeout (all tries and backoffs).
    pub timeout: Option<Duration>,
    /// Retries; `None`: none.
    pub retry: Option<RetryPolicy>,
    /// Injected faults.
    pub fault: Option<Fault>,
    /// Answer with a redirect instead of forwarding.
    pub redirect: Option<Redirect>,
    /// Path and host rewrites.
    pub rewrite: Option<Rewrite>,
    /// Changes to request headers.
    pub request_headers: HeaderChanges,
    /// Changes to response headers.
    pub response_headers: HeaderChanges,
    /// Request mirroring.
    pub mirror: Option<Mirror>,
    /// Host names it answers (gateways; `*.` wildcards); empty: any.
    pub hosts: Vec<String>,
}

/// The request's host: the `Host` header, else the URI's authority.
fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> &'a str {
    headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(http::uri::Authority::as_str))
        .unwrap_or("")
}

/// The first route whose matches hold, in order.
pub fn select<'a>(
    routes: &'a [Route],
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<&'a Route> {
    let host = request_host(uri, headers);
    routes.iter().find(|r| {
        (r.hosts.is_empty() || r.hosts.iter().any(|h| weft_core::l7::host_matches(h, host)))
            && (r.matches.is_empty() || r.matches.iter().any(|m| m.matches(method, uri, headers)))
    })
}

/// The backend for a draw `unit` in [0, 1), by weight.
pub fn pick_backend(route: &Route, unit: f64) -> Option<&Backend> {
    pick_weighted(&route.backends, unit)
}

/// One of `backends` by weight, `unit` a uniform draw in `[0, 1)`.
pub fn pick_weighted(backends: &[Backend], unit: f64) -> Option<&Backend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return backends.first();
    }
    let mut point = (unit.clamp(0.0, 1.0) * total as f64) as u64;
    for b in backends {
        if point < u64::from(b.weight) {
            return Some(b);
        }
        point -= u64::from(b.weight);
    }
    backends.last()
}

/// One `TLSRoute` on one passthrough listener, in the engine's terms.
#[derive(Debug, Clone)]
pub struct PassRoute {
    /// `namespace/name` of the TLSRoute.
    pub name: String,
    /// SNI host names (`*.` wildcard); empty: any, and connections
    /// without SNI.
    pub hosts: Vec<String>,
    /// Clusters by weight.
    pub backends: Vec<Backend>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, matches: Vec<RouteMatch>) -> Route {
        Route {
            name: name.into(),
            matches,
            backends: vec![Backend {
                service: name.into(),
                weight: 1,
            }],
            ..Route::default()
        }
    }

    #[test]
    fn selection_table() {
        let routes = vec![
            Route {
                hosts: vec!["*.partner.example".into(), "api.example".into()],
                ..route(
                    "partners",
                    vec![RouteMatch {
                        path: Some(PathMatch::Prefix("/p".into())),
                        ..Default::default()
                    }],
                )
            },
            route(
                "canary-header",
                vec![RouteMatch {
                    headers: vec![HeaderMatch {
                        name: "x-canary".into(),
                        value: ValueMatch::Exact("yes".into()),
                    }],
                    ..Default::default()
                }],
            ),
            route(
                "exact",
                vec![RouteMatch {
                    path: Some(PathMatch::Exact("/login".into())),
                    method: Some(Method::POST),
                    ..Default::default()
                }],
            ),
            route(
                "api",
                vec![RouteMatch {
                    path: Some(PathMatch::Prefix("/api/".into())),
                    ..Default::default()
                }],
            ),
            route(
                "regex",
                vec![RouteMatch {
                    path: Some(PathMatch::Regex(
                        regex::Regex::new("/v[0-9]+/.*").expect("re"),
                    )),
                    ..Default::default()
                }],
            ),
            route(
                "query",
                vec![RouteMatch {
                    query: vec![("debug".into(), ValueMatch::Exact("1".into()))],
                    ..Default::default()
                }],
            ),
            route("default", vec![]),
        ];
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().expect("value"));
            }
            m
        };
        // (method, path, headers, expected route)
        let cases = [
            (Method::GET, "/", h(&[("x-canary", "yes")]), "canary-header"),
            (Method::GET, "/", h(&[("x-canary", "no")]), "default"),
            (Method::POST, "/login", h(&[]), "exact"),
            (Method::GET, "/login", h(&[]), "default"),
            (Method::GET, "/api", h(&[]), "api"),
            (Method::GET, "/api/orders", h(&[]), "api"),
            (Method::GET, "/apix", h(&[]), "default"),
            (Method::GET, "/v2/items", h(&[]), "regex"),
            (Method::GET, "/x/v2/items", h(&[]), "default"),
            (Method::GET, "/x?a=2&debug=1", h(&[]), "query"),
            (Method::GET, "/x?debug=2", h(&[]), "default"),
            (
                Method::GET,
                "/p",
                h(&[("host", "a.partner.example")]),
                "partners",
            ),
            (
                Method::GET,
                "/p",
                h(&[("host", "API.example:8443")]),
                "partners",
            ),
            (
                Method::GET,
                "/p",
                h(&[("host", "partner.example")]),
                "default",
            ),
            (Method::GET, "/p", h(&[("host", "evil.example")]), "default"),
            (Method::GET, "/p", h(&[]), "default"),
        ];
        for (method, path, headers, want) in cases {
            let uri: Uri = path.parse().expect("uri");
            let got = select(&routes, &method, &uri, &headers).map(|r| r.name.as_str());
            assert_eq!(got, Some(want), "{method} {path}");
        }
        let root: Uri = "/".parse().expect("uri");
        assert!(select(&routes[1..2], &Method::GET, &root, &HeaderMap::new()).is_none());
    }

    #[test]
    fn rewrites() {
        let prefix = Rewrite {
            prefix: Some(("/old".into(), "/new".into())),
            ..Rewrite::default()
        };
        let cases = [
            (&prefix, "/old/a/b", "/new/a/b"),
            (&prefix, "/old", "/new"),
            (&prefix, "/other", "/other"),
        ];
        for (r, path, want) in cases {
            assert_eq!(r.path(path), want, "{path}");
        }
        let root = Rewrite {
            prefix: Some(("/api".into(), "/".into())),
            ..Rewrite::default()
        };
        assert_eq!(root.path("/api/x"), "/x");
        // The Gateway API's table for ReplacePrefixMatch, plus slashes that
        // must survive: (path, matched prefix, replacement, result).
        let table = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            // One slash boundary: extra slashes reach the backend as sent.
            ("/partner//status/200", "/partner", "/", "//status/200"),
            ("/partner///x", "/partner/", "/api", "/api///x"),
            // Istio string prefixes that end mid-element.
            ("/foobar", "/foo", "/xyz", "/xyzbar"),
        ];
        for (path, from, to, want) in table {
            assert_eq!(
                replace_prefix(path, from, to),
                want,
                "{path} {from} -> {to}"
            );
        }
        let full = Rewrite {
            full_path: Some("/fixed".into()),
            ..Rewrite::default()
        };
        assert_eq!(full.path("/anything?"), "/fixed");
    }

    #[test]
    fn header_changes_remove_set_add() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().expect("v"));
        h.insert("x-gone", "1".parse().expect("v"));
        HeaderChanges {
            set: vec![("x-a".into(), "2".into())],
            add: vec![("x-a".into(), "3".into()), ("x-new".into(), "n".into())],
            remove: vec!["x-gone".into()],
        }
        .apply(&mut h);
        let a: Vec<&str> = h
            .get_all("x-a")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(a, ["2", "3"]);
        assert!(h.get("x-gone").is_none());
        assert_eq!(h.get("x-new").map(|v| v.as_bytes()), Some(&b"n"[..]));
    }

    #[test]
    fn weights_split_the_unit_interval() {
        let mut r = route("split", vec![]);
        r.backends = vec![
            Backend {
                service: "stable".into(),
                weight: 90,
            },
            Backend {
                service: "canary".into(),
                weight: 10,
            },
        ];
        let pick = |u| pick_backend(&r, u).map(|b| b.service.as_str());
        assert_eq!(pick(0.0), Some("stable"));
        assert_eq!(pick(0.899), Some("stable"));
        assert_eq!(pick(0.9), Some("canary"));
        assert_eq!(pick(0.9999), Some("canary"));
    }
}
