//! The header maps a plugin reads and writes, over the proxy's own
//! `http` types (no copy unless the plugin asks): a request's
//! `:method`, `:path`, `:authority` and `:scheme` and a response's
//! `:status` are offered as Envoy offers them, as pseudo-headers first.

use std::borrow::Cow;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};

use crate::abi::Status;

/// A request's head as plugins see it.
#[derive(Debug, Default, Clone)]
pub struct RequestHead {
    /// Its method.
    pub method: Method,
    /// Its target (path and query; scheme and authority when absolute).
    pub uri: Uri,
    /// Its headers.
    pub headers: HeaderMap,
}

/// A response's head as plugins see it.
#[derive(Debug, Default, Clone)]
pub struct ResponseHead {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
}

/// A header pair, borrowed where it can be.
pub(crate) type Pair<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// One of the maps a call names.
pub(crate) enum Map<'a> {
    Request(&'a mut RequestHead),
    Response(&'a mut ResponseHead),
    Plain(&'a mut HeaderMap),
}

fn value(v: &str) -> Result<HeaderValue, Status> {
    HeaderValue::from_str(v).map_err(|_| Status::BadArgument)
}

impl Map<'_> {
    fn headers(&mut self) -> &mut HeaderMap {
        match self {
            Map::Request(r) => &mut r.headers,
            Map::Response(r) => &mut r.headers,
            Map::Plain(h) => h,
        }
    }

    fn headers_ref(&self) -> &HeaderMap {
        match self {
            Map::Request(r) => &r.headers,
            Map::Response(r) => &r.headers,
            Map::Plain(h) => h,
        }
    }

    /// The pseudo-header `key`'s value, if `key` is one this map has.
    fn pseudo(&self, key: &str) -> Option<Cow<'_, [u8]>> {
        match self {
            Map::Request(r) => Some(match key {
                ":method" => Cow::Borrowed(r.method.as_str().as_bytes()),
                ":path" => Cow::Borrowed(
                    r.uri
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .as_bytes(),
                ),
                ":authority" => match r.headers.get(http::header::HOST) {
                    Some(h) => Cow::Borrowed(h.as_bytes()),
                    None => Cow::Borrowed(r.uri.authority().map_or("", |a| a.as_str()).as_bytes()),
                },
                ":scheme" => Cow::Borrowed(r.uri.scheme_str().unwrap_or("http").as_bytes()),
                _ => return None,
            }),
            Map::Response(r) if key == ":status" => {
                Some(Cow::Borrowed(r.status.as_str().as_bytes()))
            }
            _ => None,
        }
    }

    /// The first value of `key` (lower case).
    pub(crate) fn get(&self, key: &str) -> Option<Cow<'_, [u8]>> {
        if key.starts_with(':') {
            return self.pseudo(key);
        }
        self.headers_ref()
            .get(key)
            .map(|v| Cow::Borrowed(v.as_bytes()))
    }

    /// Every pair, pseudo-headers first.
    pub(crate) fn pairs(&self) -> Vec<Pair<'_>> {
        let pseudo: &[&str] = match self {
            Map::Request(_) => &[":authority", ":path", ":method", ":scheme"],
            Map::Response(_) => &[":status"],
            Map::Plain(_) => &[],
        };
        let mut out: Vec<_> = pseudo
            .iter()
            .filter_map(|k| Some((Cow::Borrowed(k.as_bytes()), self.pseudo(k)?)))
            .collect();
        out.extend(self.headers_ref().iter().map(|(k, v)| {
            (
                Cow::Borrowed(k.as_str().as_bytes()),
                Cow::Borrowed(v.as_bytes()),
            )
        }));
        out
    }

    /// Sets a pseudo-header (a new path, method, authority or status).
    fn set_pseudo(&mut self, key: &str, v: &str) -> Result<(), Status> {
        match (self, key) {
            (Map::Request(r), ":method") => {
                r.method = Method::from_bytes(v.as_bytes()).map_err(|_| Status::BadArgument)?;
            }
            (Map::Request(r), ":path") => {
                let path = v.parse().map_err(|_| Status::BadArgument)?;
                let mut parts = r.uri.clone().into_parts();
                parts.path_and_query = Some(path);
                r.uri = Uri::from_parts(parts).map_err(|_| Status::BadArgument)?;
            }
            (Map::Request(r), ":authority") => {
                r.headers.insert(http::header::HOST, value(v)?);
            }
            (Map::Request(_), ":scheme") => {}
            (Map::Response(r), ":status") => {
                r.status = v
                    .parse::<u16>()
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or(Status::BadArgument)?;
            }
            _ => return Err(Status::BadArgument),
        }
        Ok(())
    }

    /// Adds `key: v` (keeping other values) or, with `replace`, sets it.
    pub(crate) fn put(&mut self, key: &str, v: &str, replace: bool) -> Result<(), Status> {
        self.put_bytes(key.as_bytes(), v.as_bytes(), replace)
    }

    /// [`Map::put`] from the bytes a plugin passed (names in any case).
    pub(crate) fn put_bytes(&mut self, key: &[u8], v: &[u8], replace: bool) -> Result<(), Status> {
        if key.first() == Some(&b':') {
            let key = std::str::from_utf8(key).map_err(|_| Status::BadArgument)?;
            let v = std::str::from_utf8(v).map_err(|_| Status::BadArgument)?;
            return self.set_pseudo(&key.to_ascii_lowercase(), v);
        }
        let key = HeaderName::from_bytes(key).map_err(|_| Status::BadArgument)?;
        let v = HeaderValue::from_bytes(v).map_err(|_| Status::BadArgument)?;
        if replace {
            self.headers().insert(key, v);
        } else {
            self.headers().append(key, v);
        }
        Ok(())
    }

    /// Removes every value of `key` (pseudo-headers stay).
    pub(crate) fn remove(&mut self, key: &str) {
        if let Ok(key) = HeaderName::from_bytes(key.as_bytes()) {
            self.headers().remove(key);
        }
    }

    /// Replaces the whole map with `pairs` (pseudo-headers set, others
    /// added in order).
    pub(crate) fn set_all(&mut self, pairs: &[(String, String)]) -> Result<(), Status> {
        self.headers().clear();
        for (k, v) in pairs {
            self.put(k, v, false)?;
        }
        Ok(())
    }

    /// The size of its pairs as `proxy_get_header_map_pairs` encodes them.
    pub(crate) fn encoded_size(&self) -> usize {
        let pairs = self.pairs();
        4 + pairs
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len() + 2)
            .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RequestHead {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("ratings:9080"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        RequestHead {
            method: Method::GET,
            uri: "/r?q=1".parse().expect("valid"),
            headers,
        }
    }

    #[test]
    fn pseudo_headers_come_first_and_write_through() {
        let mut head = request();
        let mut map = Map::Request(&mut head);
        let pairs: Vec<(String, String)> = map
            .pairs()
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        assert_eq!(pairs[0], (":authority".into(), "ratings:9080".into()));
        assert_eq!(pairs[1], (":path".into(), "/r?q=1".into()));
        assert_eq!(pairs[2], (":method".into(), "GET".into()));
        assert_eq!(pairs[3], (":scheme".into(), "http".into()));
        assert_eq!(pairs.len(), 6);
        let size = crate::abi::encode_pairs(&pairs).len();
        assert_eq!(map.encoded_size(), size);
        map.put(":path", "/other", true).expect("valid");
        map.put(":method", "POST", true).expect("valid");
        map.put("x-a", "2", false).expect("valid");
        assert_eq!(map.put("bad name", "v", false), Err(Status::BadArgument));
        assert_eq!(
            map.put(":path", "no spaces allowed", true),
            Err(Status::BadArgument)
        );
        map.remove("host");
        assert_eq!(head.uri.path(), "/other");
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        assert!(head.headers.get("host").is_none());
    }

    #[test]
    fn a_response_status_is_read_and_set() {
        let mut head = ResponseHead::default();
        let mut map = Map::Response(&mut head);
        assert_eq!(map.get(":status").as_deref(), Some(&b"200"[..]));
        map.put(":status", "418", true).expect("valid");
        assert_eq!(map.put(":status", "1000", true), Err(Status::BadArgument));
        assert_eq!(head.status, StatusCode::IM_A_TEAPOT);
    }
}
