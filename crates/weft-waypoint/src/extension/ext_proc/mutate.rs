//! The pure half of external processing: what is sent for a head
//! ([`header_map`]), and what an answer does — header mutations with
//! Envoy's append actions ([`mutate`]), body mutations, immediate
//! responses — each a function with table tests.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use weft_wasm::LocalResponse;

use super::proto;

/// An immediate response as the engine answers it.
pub(crate) fn immediate(i: &proto::ImmediateResponse) -> LocalResponse {
    let status = i
        .status
        .as_ref()
        .and_then(|s| u16::try_from(s.code).ok())
        .filter(|s| (200..=599).contains(s))
        .unwrap_or(500);
    let mut headers = HeaderMap::new();
    if let Some(m) = &i.headers {
        mutate(&mut headers, m);
    }
    LocalResponse {
        status,
        details: i.details.clone(),
        body: i.body.clone(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
    }
}

/// A header's value as the processor sent it (`raw_value`, else `value`).
fn value_of(h: &proto::HeaderValue) -> &[u8] {
    if h.raw_value.is_empty() {
        h.value.as_bytes()
    } else {
        &h.raw_value
    }
}

/// Applies `m` to `headers`: Envoy's append actions; `:`-headers and
/// `host` are not removed, `:method`, `:authority`, `:scheme` and `host`
/// not set (the pseudo-headers a caller may set, `:path` and `:status`,
/// are returned for the caller to apply).
pub fn mutate(headers: &mut HeaderMap, m: &proto::HeaderMutation) -> Vec<(String, Vec<u8>)> {
    let mut pseudo = Vec::new();
    for option in &m.set_headers {
        let Some(h) = &option.header else { continue };
        let key = h.key.to_ascii_lowercase();
        if matches!(key.as_str(), ":method" | ":authority" | ":scheme" | "host") {
            continue;
        }
        if key.starts_with(':') {
            pseudo.push((key, value_of(h).to_vec()));
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_bytes(value_of(h)),
        ) else {
            continue;
        };
        match option.append_action {
            // ADD_IF_ABSENT
            1 => {
                if !headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
            // OVERWRITE_IF_EXISTS_OR_ADD
            2 => {
                headers.insert(name, value);
            }
            // OVERWRITE_IF_EXISTS
            3 => {
                if headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
            // APPEND_IF_EXISTS_OR_ADD
            _ => {
                headers.append(name, value);
            }
        }
    }
    for name in &m.remove_headers {
        let name = name.to_ascii_lowercase();
        if name.starts_with(':') || name == "host" {
            continue;
        }
        headers.remove(name.as_str());
    }
    pseudo
}

/// The header map sent for a head: `pseudo` first, then `headers`.
pub(crate) fn header_map(pseudo: &[(&str, &str)], headers: &HeaderMap) -> proto::HeaderMap {
    let mut out: Vec<proto::HeaderValue> = pseudo
        .iter()
        .map(|(k, v)| proto::HeaderValue {
            key: (*k).to_owned(),
            value: String::new(),
            raw_value: v.as_bytes().to_vec(),
        })
        .collect();
    out.extend(headers.iter().map(|(k, v)| proto::HeaderValue {
        key: k.as_str().to_owned(),
        value: String::new(),
        raw_value: v.as_bytes().to_vec(),
    }));
    proto::HeaderMap { headers: out }
}

/// A body mutation applied to `body`.
pub(crate) fn mutate_body(body: Bytes, common: Option<&proto::CommonResponse>) -> Bytes {
    match common.and_then(|c| c.body_mutation.as_ref()?.mutation.as_ref()) {
        Some(proto::body_mutation::Mutation::Body(b)) => Bytes::from(b.clone()),
        Some(proto::body_mutation::Mutation::ClearBody(true)) => Bytes::new(),
        _ => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str, action: i32) -> proto::HeaderValueOption {
        proto::HeaderValueOption {
            header: Some(proto::HeaderValue {
                key: key.into(),
                value: String::new(),
                raw_value: value.as_bytes().to_vec(),
            }),
            append_action: action,
        }
    }

    #[test]
    fn header_mutations_follow_envoys_append_actions_and_spare_system_headers() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("shop"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        let m = proto::HeaderMutation {
            set_headers: vec![
                set("x-a", "2", 0),     // append
                set("x-b", "2", 1),     // only if absent: kept 1
                set("x-c", "3", 1),     // absent: added
                set("x-b", "9", 2),     // overwrite: 9
                set("x-d", "4", 3),     // overwrite only if present: not added
                set("host", "evil", 2), // ignored
                set(":path", "/new", 2),
                set(":method", "DELETE", 2),
                set("bad name", "v", 0),
            ],
            remove_headers: vec!["x-c".into(), "host".into(), ":path".into()],
        };
        let pseudo = mutate(&mut h, &m);
        assert_eq!(pseudo, [(":path".to_owned(), b"/new".to_vec())]);
        let values = |k: &str| -> Vec<&str> {
            h.get_all(k)
                .iter()
                .map(|v| v.to_str().expect("text"))
                .collect()
        };
        assert_eq!(values("x-a"), ["1", "2"]);
        assert_eq!(values("x-b"), ["9"]);
        assert!(values("x-c").is_empty() && values("x-d").is_empty());
        assert_eq!(values("host"), ["shop"]);
    }

    #[test]
    fn immediate_responses() {
        let r = immediate(&proto::ImmediateResponse {
            status: Some(proto::HttpStatus { code: 451 }),
            headers: Some(proto::HeaderMutation {
                set_headers: vec![set("x-why", "law", 0)],
                remove_headers: vec![],
            }),
            body: b"blocked".to_vec(),
            grpc_status: None,
            details: "policy".into(),
        });
        assert_eq!((r.status, r.body.as_slice()), (451, &b"blocked"[..]));
        assert_eq!(r.headers, [("x-why".to_owned(), "law".to_owned())]);
        // A status out of range answers 500.
        assert_eq!(immediate(&proto::ImmediateResponse::default()).status, 500);
    }
}
