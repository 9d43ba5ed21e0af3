//! The Proxy-Wasm ABI's numbers and wire formats (version 0.2.1, as the
//! proxy-wasm/spec repository and Envoy define them), as pure functions:
//! the status codes host calls return, the header maps and buffers a
//! plugin names, and the serialized form of a list of header pairs.

/// What a host call returns to the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// The header, property or key is not there.
    NotFound = 1,
    /// An argument is out of range (an unknown map or buffer type).
    BadArgument = 2,
    /// Bytes could not be serialized.
    SerializationFailure = 3,
    /// Bytes could not be parsed (a malformed pair list).
    ParseFailure = 4,
    /// A pointer and length outside the plugin's memory.
    InvalidMemoryAccess = 6,
    /// Nothing to return (an empty queue).
    Empty = 7,
    /// A compare-and-swap lost.
    CasMismatch = 8,
    /// The host failed.
    InternalFailure = 10,
    /// Not supported by this host.
    Unimplemented = 12,
}

impl Status {
    /// As the plugin receives it.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// The header maps a plugin can read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    /// The request's headers.
    RequestHeaders,
    /// The request's trailers.
    RequestTrailers,
    /// The response's headers.
    ResponseHeaders,
    /// The response's trailers.
    ResponseTrailers,
    /// The headers of the answer to a `proxy_http_call`.
    HttpCallResponseHeaders,
    /// The trailers of the answer to a `proxy_http_call`.
    HttpCallResponseTrailers,
}

impl MapType {
    /// The map numbered `n`, if the ABI has one (gRPC metadata, 4 and 5,
    /// is not offered).
    pub fn from_code(n: i32) -> Option<MapType> {
        Some(match n {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// The buffers a plugin can read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferType {
    /// The request's body.
    RequestBody,
    /// The response's body.
    ResponseBody,
    /// The body of the answer to a `proxy_http_call`.
    HttpCallResponseBody,
    /// The VM's configuration (`vmConfig`).
    VmConfiguration,
    /// The plugin's configuration (`pluginConfig`).
    PluginConfiguration,
}

impl BufferType {
    /// The buffer numbered `n`, if the ABI has one this host offers.
    pub fn from_code(n: i32) -> Option<BufferType> {
        Some(match n {
            0 => BufferType::RequestBody,
            1 => BufferType::ResponseBody,
            4 => BufferType::HttpCallResponseBody,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            _ => return None,
        })
    }
}

/// What a plugin asks of a stream callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Go on to the next plugin and the upstream.
    Continue,
    /// Hold the stream until the plugin resumes it.
    Pause,
}

impl Action {
    /// The action a callback returned (anything but 1 continues, as in
    /// Envoy).
    pub fn from_code(n: i32) -> Action {
        if n == 1 {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

/// The levels of `proxy_log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// 0.
    Trace,
    /// 1.
    Debug,
    /// 2.
    Info,
    /// 3.
    Warn,
    /// 4.
    Error,
    /// 5.
    Critical,
}

impl LogLevel {
    /// The level numbered `n` (out of range: `None`).
    pub fn from_code(n: i32) -> Option<LogLevel> {
        Some(match n {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// The kinds of `proxy_define_metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Records values.
    Histogram,
}

impl MetricType {
    /// The kind numbered `n`.
    pub fn from_code(n: i32) -> Option<MetricType> {
        Some(match n {
            0 => MetricType::Counter,
            1 => MetricType::Gauge,
            2 => MetricType::Histogram,
            _ => return None,
        })
    }
}

/// Serializes header pairs as the ABI passes them: the count, then each
/// pair's key and value lengths, then each key and value followed by a
/// NUL, all integers 32-bit little-endian.
pub fn encode_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 8 + k.as_ref().len() + v.as_ref().len() + 2)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Parses what [`encode_pairs`] makes; `None` when the bytes do not hold
/// what their counts and lengths say. Empty input is no pairs.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = u32_at(0)?;
    // Each pair needs at least 10 bytes: refuse counts the input cannot hold.
    if count > bytes.len() / 10 {
        return None;
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        sizes.push((u32_at(4 + 8 * i)?, u32_at(8 + 8 * i)?));
    }
    let mut at = 4 + 8 * count;
    let mut take = |len: usize| -> Option<Vec<u8>> {
        let end = at.checked_add(len)?;
        let value = bytes.get(at..end)?.to_vec();
        if bytes.get(end) != Some(&0) {
            return None;
        }
        at = end + 1;
        Some(value)
    };
    let mut out = Vec::with_capacity(count);
    for (k, v) in sizes {
        out.push((take(k)?, take(v)?));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_in_the_abis_layout() {
        let pairs = [("a", "bc"), ("x-weft", "")];
        let bytes = encode_pairs(&pairs);
        assert_eq!(
            bytes,
            [
                2, 0, 0, 0, // two pairs
                1, 0, 0, 0, 2, 0, 0, 0, // "a" → "bc"
                6, 0, 0, 0, 0, 0, 0, 0, // "x-weft" → ""
                b'a', 0, b'b', b'c', 0, b'x', b'-', b'w', b'e', b'f', b't', 0, 0,
            ]
        );
        let back = decode_pairs(&bytes).expect("decodes");
        assert_eq!(
            back,
            [
                (b"a".to_vec(), b"bc".to_vec()),
                (b"x-weft".to_vec(), Vec::new())
            ]
        );
        assert_eq!(decode_pairs(&[]), Some(Vec::new()));
    }

    #[test]
    fn malformed_pairs_are_refused_not_trusted() {
        let good = encode_pairs(&[("k", "v")]);
        for bad in [
            &good[..good.len() - 1],           // missing the last NUL
            &[255, 255, 255, 255, 0, 0, 0, 0], // a count the bytes cannot hold
            &good[..3],                        // not even a count
        ] {
            assert_eq!(decode_pairs(bad), None, "{bad:?}");
        }
        let mut no_nul = good.clone();
        let n = no_nul.len();
        no_nul[n - 3] = b'!'; // the key's NUL
        assert_eq!(decode_pairs(&no_nul), None);
    }
}
