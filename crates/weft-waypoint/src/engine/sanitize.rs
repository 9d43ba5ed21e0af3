//! The first phase of every request, before routing or policy sees it:
//! one normalized host, no hop-by-hop headers, and none of the headers
//! weft itself sets (identity, verified claims, client names) unless a
//! weft proxy sent them. Route selection, authorization, rate limits, the
//! access log and the upstream then all see the same request.
//!
//! Pure functions over `http` types, table-tested.

use http::header::{CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, TE};

/// Headers weft sets itself and that no client may supply: the
/// client-certificate summary Envoy and Istio forward, JWT claims as
/// other proxies pass them, and the API-key client name's default header.
/// The headers a configuration names for the same purpose (a JWT rule's
/// `outputClaimToHeaders`, an API-key provider's `clientHeader`, an HTTP
/// authorizer's `headersToUpstreamOnAllow`) are added per configuration.
pub const INTERNAL_HEADERS: [&str; 3] = [
    "x-forwarded-client-cert",
    "x-jwt-claims",
    "x-weft-api-client",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
static HOP_BY_HOP: [HeaderName; 5] = [
    http::header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    http::header::UPGRADE,
    http::header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers: the fixed ones, every header the
/// `Connection` header lists, and `TE` unless it asks for trailers (kept
/// as `TE: trailers`, which gRPC needs).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none of them: one pass over the names instead
    // of a lookup for each.
    if !headers
        .keys()
        .any(|name| *name == TE || HOP_BY_HOP.contains(name))
    {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        if name != TE {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let trailers = headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(TE);
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes every header in `names`.
pub fn strip_internal(headers: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        headers.remove(name);
    }
}

/// A host as weft compares it: lowercase, one trailing dot removed, the
/// scheme's default port (`default_port`) dropped. `None` when it is not a
/// host (empty, a bad port, an unclosed IPv6 bracket).
pub fn normalize_host(raw: &str, default_port: u16) -> Option<String> {
    // RFC 3986 `host [":" port]`: reg-name characters, or an IPv6 literal.
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b);
    if !raw.bytes().all(allowed) {
        return None;
    }
    let raw = raw.to_ascii_lowercase();
    let (host, port) = if let Some(v6) = raw.strip_prefix('[') {
        let (addr, after) = v6.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{addr}]"), port)
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (raw.clone(), None),
        }
    };
    let host = if host.starts_with('[') {
        host
    } else {
        host.strip_suffix('.').map_or(host.clone(), str::to_owned)
    };
    // One trailing dot is the DNS root; more, or a colon outside brackets,
    // is not a host.
    let unbracketed = !host.starts_with('[');
    if host.is_empty() || (unbracketed && (host.ends_with('.') || host.contains(':'))) {
        return None;
    }
    match port {
        None => Some(host),
        Some(p) => {
            let p: u16 = p.parse().ok()?;
            if p == default_port {
                Some(host)
            } else {
                Some(format!("{host}:{p}"))
            }
        }
    }
}

/// Whether `raw` is already what [`normalize_host`] makes of it, answered
/// without allocating for the common forms (lowercase name or IPv4
/// address, an optional port other than the default); `false` sends it
/// the long way.
fn is_normal_host(raw: &str, default_port: u16) -> bool {
    let (host, port) = match raw.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (raw, None),
    };
    let name_ok = !host.is_empty()
        && !host.ends_with('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    // Digits only: `u16::from_str` also takes a leading `+`.
    let port_ok = port.is_none_or(|p| {
        !p.starts_with('0')
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n != default_port)
    });
    name_ok && port_ok
}

/// Settles the request's host: from `:authority` (the URI's authority)
/// and `Host`, which must agree once normalized; then written back as the
/// one `Host` header, the URI reduced to its path and query. `https`
/// picks the default port. `Err` is the reason for a 400.
pub fn settle_host(parts: &mut http::request::Parts, https: bool) -> Result<(), String> {
    let default_port = if https { 443 } else { 80 };
    let mut hosts = parts.headers.get_all(HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if let (Some(h), None, None) = (first, second, parts.uri.authority())
        && h.to_str().is_ok_and(|h| is_normal_host(h, default_port))
    {
        // The HTTP/1.1 common case: one Host header, already normal.
        return Ok(());
    }
    if let (None, Some(a)) = (first, parts.uri.authority())
        && is_normal_host(a.as_str(), default_port)
    {
        // The HTTP/2 common case: `:authority` alone, already normal. It
        // becomes the Host header; the path is kept as parsed.
        let value = HeaderValue::from_str(a.as_str())
            .map_err(|_| format!(":authority {:?} is not valid", a.as_str()))?;
        parts.headers.insert(HOST, value);
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = None;
        uri.authority = None;
        uri.path_and_query = uri
            .path_and_query
            .or(Some(http::uri::PathAndQuery::from_static("/")));
        parts.uri = http::Uri::from_parts(uri).map_err(|e| format!("request path: {e}"))?;
        return Ok(());
    }
    let header = match (first, second) {
        (Some(_), Some(_)) => return Err("more than one Host header".into()),
        (Some(h), None) => Some(
            h.to_str()
                .map_err(|_| "Host header is not text".to_owned())?
                .to_owned(),
        ),
        (None, _) => None,
    };
    let normalize = |raw: &str, what: &str| {
        normalize_host(raw, default_port).ok_or_else(|| format!("{what} {raw:?} is not a host"))
    };
    let from_header = header
        .as_deref()
        .map(|h| normalize(h, "Host"))
        .transpose()?;
    let from_uri = parts
        .uri
        .authority()
        .map(|a| normalize(a.as_str(), ":authority"))
        .transpose()?;
    let host = match (from_uri, from_header) {
        (Some(a), Some(h)) if a != h => {
            return Err(format!("Host {h:?} and :authority {a:?} disagree"));
        }
        (Some(a), _) => a,
        (None, Some(h)) => h,
        (None, None) => return Ok(()),
    };
    let value = HeaderValue::from_str(&host).map_err(|_| format!("host {host:?} is not valid"))?;
    parts.headers.insert(HOST, value);
    if parts.uri.authority().is_some() {
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        parts.uri = path
            .parse()
            .map_err(|e| format!("request path {path:?}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_check_agrees_with_normalizing() {
        let alphabet = b"aZ09-.:[]_%x8+";
        let mut rng = fastrand::Rng::with_seed(7);
        let mut fast = 0;
        for _ in 0..200_000 {
            let len = rng.usize(0..12);
            let raw: String = (0..len)
                .map(|_| char::from(alphabet[rng.usize(..alphabet.len())]))
                .collect();
            for default_port in [80, 443] {
                if is_normal_host(&raw, default_port) {
                    fast += 1;
                    assert_eq!(
                        normalize_host(&raw, default_port).as_deref(),
                        Some(raw.as_str()),
                        "{raw:?}"
                    );
                }
            }
        }
        assert!(fast > 1000, "the fast path was taken {fast} times");
        for (raw, port) in [
            ("reviews", 80),
            ("reviews.shop:9080", 80),
            ("10.0.0.1:443", 80),
        ] {
            assert!(is_normal_host(raw, port), "{raw}");
        }
        for (raw, port) in [
            ("Reviews", 80),
            ("reviews:80", 80),
            ("reviews.", 80),
            ("a:080", 80),
            ("a:+440", 80),
        ] {
            assert!(!is_normal_host(raw, port), "{raw}");
        }
    }

    #[test]
    fn hosts_normalize_to_one_form() {
        // (raw, default port, normalized)
        let cases = [
            ("partner.example", 80, Some("partner.example")),
            ("PARTNER.Example", 80, Some("partner.example")),
            ("partner.example.", 80, Some("partner.example")),
            ("partner.example.:80", 80, Some("partner.example")),
            ("partner.example:443", 443, Some("partner.example")),
            ("partner.example:443", 80, Some("partner.example:443")),
            ("partner.example:8080", 80, Some("partner.example:8080")),
            ("10.0.0.7:80", 80, Some("10.0.0.7")),
            ("[::1]:80", 80, Some("[::1]")),
            ("[::1]:8443", 80, Some("[::1]:8443")),
            ("[::1]", 80, Some("[::1]")),
            ("partner.example..", 80, None),
            ("a:80:80", 80, None),
            ("", 80, None),
            (":80", 80, None),
            ("a:b", 80, None),
            ("a:99999", 80, None),
            ("[::1", 80, None),
            ("user@host", 80, None),
            (" partner.example", 80, None),
            ("partner.example\t", 80, None),
            (".\u{b}.", 80, None),
        ];
        for (raw, port, want) in cases {
            assert_eq!(normalize_host(raw, port).as_deref(), want, "{raw:?}");
        }
    }

    fn parts(uri: &str, hosts: &[&str]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).expect("request").into_parts().0
    }

    /// (uri, Host headers, https, Ok(settled Host) or Err(fragment)).
    type HostCase = (
        &'static str,
        &'static [&'static str],
        bool,
        Result<&'static str, &'static str>,
    );

    #[test]
    fn one_host_from_authority_or_header() {
        let cases: [HostCase; 10] = [
            ("/x", &["PARTNER.example."], false, Ok("partner.example")),
            // HTTP/2: :authority alone, already normal (kept as it is) or
            // not.
            ("http://a.example:8080/x", &[], false, Ok("a.example:8080")),
            ("https://a.example:80/x", &[], true, Ok("a.example:80")),
            (
                "http://Partner.Example/x",
                &[],
                false,
                Ok("partner.example"),
            ),
            ("https://a.example:443/x", &[], true, Ok("a.example")),
            // Both, agreeing once normalized.
            (
                "http://a.example/x",
                &["A.EXAMPLE:80"],
                false,
                Ok("a.example"),
            ),
            // Both, disagreeing.
            ("http://a.example/x", &["b.example"], false, Err("disagree")),
            (
                "/x",
                &["a.example", "b.example"],
                false,
                Err("more than one"),
            ),
            ("/x", &["a:notaport"], false, Err("is not a host")),
            ("/x", &[], false, Ok("")),
        ];
        for (uri, hosts, https, want) in cases {
            let mut p = parts(uri, hosts);
            let got = settle_host(&mut p, https);
            match (want, got) {
                (Ok(""), Ok(())) => assert!(p.headers.get(HOST).is_none()),
                (Ok(host), Ok(())) => {
                    assert_eq!(p.headers[HOST], host, "{uri} {hosts:?}");
                    assert_eq!(p.uri, "/x", "the URI keeps only the path");
                }
                (Err(needle), Err(e)) => assert!(e.contains(needle), "{uri} {hosts:?}: {e}"),
                (want, got) => panic!("{uri} {hosts:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip, trailers;q=1"),
            ("x-kept", "yes"),
        ] {
            h.append(n, v.parse().expect("value"));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.iter().map(|(n, v)| format!("{n}: {v:?}")).collect();
        left.sort();
        assert_eq!(left, ["te: \"trailers\"", "x-kept: \"yes\""]);
        let mut only_gzip = HeaderMap::new();
        only_gzip.insert(TE, "gzip".parse().expect("value"));
        strip_hop_by_hop(&mut only_gzip);
        assert!(only_gzip.is_empty());
    }

    #[test]
    fn internal_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("x-weft-api-client", "admin".parse().expect("v"));
        h.insert("x-tier", "platinum".parse().expect("v"));
        h.insert("x-kept", "1".parse().expect("v"));
        let names = [
            HeaderName::from_static("x-weft-api-client"),
            HeaderName::from_static("x-tier"),
        ];
        strip_internal(&mut h, &names);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
