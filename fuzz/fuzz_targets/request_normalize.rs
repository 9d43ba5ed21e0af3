//! Hosts and headers from hostile requests through the normalization every
//! L7 request gets first (`weft_waypoint::engine::sanitize`). Properties: a
//! normalized host normalizes to itself, is lowercase and ends in no dot;
//! settling a request's host leaves exactly one `Host` header, equal to
//! the normalized value; hop-by-hop stripping leaves none of the fixed
//! hop-by-hop headers and at most `te: trailers`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_waypoint::engine::sanitize::{normalize_host, settle_host, strip_hop_by_hop};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let (host, uri, headers) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    for port in [80, 443] {
        if let Some(n) = normalize_host(host, port) {
            assert_eq!(normalize_host(&n, port).as_deref(), Some(n.as_str()), "{host:?}");
            assert_eq!(n, n.to_ascii_lowercase());
            assert!(!n.split(':').next().unwrap_or_default().ends_with('.') || n.starts_with('['));
        }
    }
    let mut builder = http::Request::builder().uri(if uri.is_empty() { "/" } else { uri });
    if let Ok(v) = http::HeaderValue::from_str(host) {
        builder = builder.header(http::header::HOST, v);
    }
    for line in headers.lines() {
        if let Some((n, v)) = line.split_once(':')
            && let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            )
        {
            builder = builder.header(n, v);
        }
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    let https = data.len() % 2 == 0;
    if settle_host(&mut parts, https).is_ok() {
        let hosts: Vec<_> = parts.headers.get_all(http::header::HOST).iter().collect();
        assert!(hosts.len() <= 1);
        if let Some(h) = hosts.first() {
            let h = h.to_str().expect("text");
            assert_eq!(normalize_host(h, if https { 443 } else { 80 }).as_deref(), Some(h));
            assert!(parts.uri.authority().is_none());
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    for name in ["connection", "keep-alive", "proxy-connection", "upgrade", "transfer-encoding"] {
        assert!(!parts.headers.contains_key(name), "{name} left");
    }
    if let Some(te) = parts.headers.get(http::header::TE) {
        assert_eq!(te, "trailers");
    }
});
