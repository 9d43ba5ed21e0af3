//! Request path normalization, before routing and policy: what a route
//! or an `AuthorizationPolicy` path matches, what rate-limit rules see
//! and what the upstream receives is one normalized path, so a path
//! written differently (`//partner/x`, `/x/../partner/x`, `/%70artner/x`,
//! `/partner%2Fx`) cannot reach what a policy on `/partner/*` protects.
//!
//! The modes are Istio's (`meshConfig.pathNormalization`):
//!
//! - `NONE`: the path as received;
//! - `BASE` (the default): RFC 3986 normalization — percent-encoded
//!   unreserved characters decoded, hexadecimal digits of the other
//!   escapes upper-cased, backslashes turned into slashes, dot segments
//!   removed (`..` above the root is dropped, RFC 3986 §5.2.4);
//! - `MERGE_SLASHES`: `BASE`, then runs of slashes merged into one;
//! - `DECODE_AND_MERGE_SLASHES`: `%2F` and `%5C` (either case) decoded
//!   to `/` and `\` first, then as `MERGE_SLASHES`.
//!
//! A path that cannot be normalized safely — an invalid or truncated
//! percent-escape, an encoded or raw NUL, a control character, a fragment
//! — is refused (400), never passed on as it came. The query is kept as
//! sent. A pure function, table-tested.

use std::fmt;

pub use weft_core::model::PathNormalization;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// A `%` not followed by two hexadecimal digits.
    BadEscape(String),
    /// A NUL or other control character, raw or encoded.
    ControlCharacter,
    /// A `#` fragment, which a request never carries.
    Fragment,
    /// Not a path at all (`*`, authority form).
    NotAPath,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::BadEscape(at) => write!(f, "invalid percent-escape at {at:?}"),
            PathError::ControlCharacter => f.write_str("the path holds a control character"),
            PathError::Fragment => f.write_str("the request target holds a fragment"),
            PathError::NotAPath => f.write_str("the request target is not a path"),
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether `path` is normal under every mode as it is: a `/`, then only
/// unreserved characters and slashes, no empty, `.` or `..` segment. Most
/// paths are; the engine checks this first and normalizes only the rest
/// (no copy of the path per request).
pub fn is_plainly_normal(path: &str) -> bool {
    path.starts_with('/')
        && path.bytes().all(|b| unreserved(b) || b == b'/')
        && !path.contains("//")
        && path
            .split('/')
            .all(|segment| !matches!(segment, "." | ".."))
}

/// Normalizes `path` (the path part of an origin-form target, no query)
/// under `mode`. `None` mode returns the path unchanged, still refusing
/// what no mode may pass (control characters, fragments).
pub fn normalize(path: &str, mode: PathNormalization) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAPath);
    }
    if path.contains('#') {
        return Err(PathError::Fragment);
    }
    if path.bytes().any(|b| b.is_ascii_control()) {
        return Err(PathError::ControlCharacter);
    }
    // Escapes: validated in every mode; decoded where the mode says.
    let bytes = path.as_bytes();
    let mut decoded: Vec<u8> = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            decoded.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            // Bytes, not `str` slicing: the escape may be cut short by a
            // multi-byte character (found by fuzzing: a panic otherwise).
            let end = (i + 3).min(bytes.len());
            return Err(PathError::BadEscape(
                String::from_utf8_lossy(&bytes[i..end]).into_owned(),
            ));
        };
        let value = hi * 16 + lo;
        if value.is_ascii_control() {
            return Err(PathError::ControlCharacter);
        }
        let decode_slash =
            mode == PathNormalization::DecodeAndMergeSlashes && matches!(value, b'/' | b'\\');
        if mode != PathNormalization::None && (unreserved(value) || decode_slash) {
            decoded.push(value);
        } else if mode == PathNormalization::None {
            decoded.extend_from_slice(&bytes[i..i + 3]);
        } else {
            decoded.extend_from_slice(format!("%{value:02X}").as_bytes());
        }
        i += 3;
    }
    // Only ASCII was decoded, so the text stays as valid as it came.
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::NotAPath)?;
    if mode == PathNormalization::None {
        return Ok(decoded);
    }
    let slashed = decoded.replace('\\', "/");
    let dotless = remove_dot_segments(&slashed);
    Ok(match mode {
        PathNormalization::MergeSlashes | PathNormalization::DecodeAndMergeSlashes => {
            merge_slashes(&dotless)
        }
        _ => dotless,
    })
}

/// RFC 3986 §5.2.4, on an absolute path: `.` segments go, `..` removes
/// the segment before it (none above the root).
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut normalized = String::with_capacity(path.len());
    for s in &out {
        normalized.push('/');
        normalized.push_str(s);
    }
    if trailing_slash || normalized.is_empty() {
        normalized.push('/');
    }
    normalized
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut previous = '\0';
    for c in path.chars() {
        if !(c == '/' && previous == '/') {
            out.push(c);
        }
        previous = c;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::PathNormalization::{
        Base, DecodeAndMergeSlashes as Decode, MergeSlashes as Merge, None,
    };
    use super::*;

    /// Each hostile path under each mode: the normalized path, or `!` and
    /// the start of the refusal.
    #[test]
    fn hostile_paths_under_each_mode() {
        // (path, NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)
        let cases: [(&str, [&str; 4]); 31] = [
            (
                "/partner/x",
                ["/partner/x", "/partner/x", "/partner/x", "/partner/x"],
            ),
            (
                "//partner/x",
                ["//partner/x", "//partner/x", "/partner/x", "/partner/x"],
            ),
            (
                "/x/../partner/x",
                ["/x/../partner/x", "/partner/x", "/partner/x", "/partner/x"],
            ),
            (
                "/%70artner/x",
                ["/%70artner/x", "/partner/x", "/partner/x", "/partner/x"],
            ),
            (
                "/partner%2Fx",
                ["/partner%2Fx", "/partner%2Fx", "/partner%2Fx", "/partner/x"],
            ),
            (
                "/partner%2fx",
                ["/partner%2fx", "/partner%2Fx", "/partner%2Fx", "/partner/x"],
            ),
            (
                "/%2e%2e/partner/x",
                [
                    "/%2e%2e/partner/x",
                    "/partner/x",
                    "/partner/x",
                    "/partner/x",
                ],
            ),
            (
                "/a/%2E%2E/partner/x",
                [
                    "/a/%2E%2E/partner/x",
                    "/partner/x",
                    "/partner/x",
                    "/partner/x",
                ],
            ),
            (
                "/partner%252Fx",
                [
                    "/partner%252Fx",
                    "/partner%252Fx",
                    "/partner%252Fx",
                    "/partner%252Fx",
                ],
            ),
            (
                "/./partner/./x",
                ["/./partner/./x", "/partner/x", "/partner/x", "/partner/x"],
            ),
            (
                "/partner/x/.",
                ["/partner/x/.", "/partner/x/", "/partner/x/", "/partner/x/"],
            ),
            (
                "/partner/x/..",
                ["/partner/x/..", "/partner/", "/partner/", "/partner/"],
            ),
            (
                "/../../partner/x",
                ["/../../partner/x", "/partner/x", "/partner/x", "/partner/x"],
            ),
            ("/..", ["/..", "/", "/", "/"]),
            ("/", ["/", "/", "/", "/"]),
            (
                "/partner\\x",
                ["/partner\\x", "/partner/x", "/partner/x", "/partner/x"],
            ),
            (
                "/partner%5Cx",
                ["/partner%5Cx", "/partner%5Cx", "/partner%5Cx", "/partner/x"],
            ),
            (
                "/partner%5c..%5cadmin",
                [
                    "/partner%5c..%5cadmin",
                    "/partner%5C..%5Cadmin",
                    "/partner%5C..%5Cadmin",
                    "/admin",
                ],
            ),
            (
                "/PARTNER/x",
                ["/PARTNER/x", "/PARTNER/x", "/PARTNER/x", "/PARTNER/x"],
            ),
            (
                "/partner/%7euser",
                [
                    "/partner/%7euser",
                    "/partner/~user",
                    "/partner/~user",
                    "/partner/~user",
                ],
            ),
            (
                "/partner;jsessionid=1/x",
                [
                    "/partner;jsessionid=1/x",
                    "/partner;jsessionid=1/x",
                    "/partner;jsessionid=1/x",
                    "/partner;jsessionid=1/x",
                ],
            ),
            ("/a%20b", ["/a%20b", "/a%20b", "/a%20b", "/a%20b"]),
            (
                "/partner/x%",
                [
                    "!invalid percent-escape",
                    "!invalid percent-escape",
                    "!invalid percent-escape",
                    "!invalid percent-escape",
                ],
            ),
            (
                "/partner/%zz",
                [
                    "!invalid percent-escape",
                    "!invalid percent-escape",
                    "!invalid percent-escape",
                    "!invalid percent-escape",
                ],
            ),
            (
                "/partner/%2",
                [
                    "!invalid percent-escape",
                    "!invalid percent-escape",
                    "!invalid percent-escape",
                    "!invalid percent-escape",
                ],
            ),
            (
                "/% \u{379}2F",
                [
                    "!invalid percent-escape",
                    "!invalid percent-escape",
                    "!invalid percent-escape",
                    "!invalid percent-escape",
                ],
            ),
            (
                "/partner%00/x",
                [
                    "!the path holds a control",
                    "!the path holds a control",
                    "!the path holds a control",
                    "!the path holds a control",
                ],
            ),
            (
                "/partner\u{0}/x",
                [
                    "!the path holds a control",
                    "!the path holds a control",
                    "!the path holds a control",
                    "!the path holds a control",
                ],
            ),
            (
                "/partner#frag",
                [
                    "!the request target holds a fragment",
                    "!the request target holds a fragment",
                    "!the request target holds a fragment",
                    "!the request target holds a fragment",
                ],
            ),
            (
                "*",
                [
                    "!the request target is not a path",
                    "!the request target is not a path",
                    "!the request target is not a path",
                    "!the request target is not a path",
                ],
            ),
            (
                "partner/x",
                [
                    "!the request target is not a path",
                    "!the request target is not a path",
                    "!the request target is not a path",
                    "!the request target is not a path",
                ],
            ),
        ];
        for (path, wants) in cases {
            for (mode, want) in [None, Base, Merge, Decode].into_iter().zip(wants) {
                match (normalize(path, mode), want.strip_prefix('!')) {
                    (Ok(got), Option::None) => assert_eq!(got, want, "{path:?} under {mode:?}"),
                    (Err(e), Some(why)) => {
                        assert!(
                            e.to_string().starts_with(why),
                            "{path:?} under {mode:?}: {e}"
                        )
                    }
                    (got, _) => panic!("{path:?} under {mode:?}: got {got:?}, want {want}"),
                }
            }
        }
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for path in ["/a//b/../c/%2e/d", "/%70%41th%2Fx", "/x\\..\\y", "/a/./b/"] {
            for mode in [Base, Merge, Decode] {
                let once = normalize(path, mode).expect("normalizes");
                assert_eq!(
                    normalize(&once, mode).expect("again"),
                    once,
                    "{path} {mode:?}"
                );
            }
        }
    }

    /// What the fast check calls normal, every mode leaves as it is; and
    /// it calls the common paths normal (random paths over an alphabet of
    /// the characters and segments that matter).
    #[test]
    fn plainly_normal_paths_are_normal_under_every_mode() {
        for path in ["/", "/a", "/a/b/", "/reviews/1", "/a.b/c~d_e-f"] {
            assert!(is_plainly_normal(path), "{path}");
        }
        for path in [
            "", "a", "//", "/a//b", "/./a", "/a/..", "/%61", "/a\\b", "/a?b",
        ] {
            assert!(!is_plainly_normal(path), "{path}");
        }
        let pieces = ["/", "a", ".", "..", "%2e", "%2F", "\\", "~", "b-c", "//"];
        let mut rng = fastrand::Rng::with_seed(20);
        let mut plain = 0;
        for _ in 0..20_000 {
            let path: String = std::iter::once("/")
                .chain((0..rng.usize(0..6)).map(|_| pieces[rng.usize(..pieces.len())]))
                .collect();
            if is_plainly_normal(&path) {
                plain += 1;
                for mode in [None, Base, Merge, Decode] {
                    assert_eq!(
                        normalize(&path, mode).as_deref(),
                        Ok(path.as_str()),
                        "{path} {mode:?}"
                    );
                }
            }
        }
        assert!(plain > 1_000, "the generator makes plain paths too");
    }

    #[test]
    fn modes_by_istio_name() {
        assert_eq!(PathNormalization::parse("BASE"), Some(Base));
        assert_eq!(
            PathNormalization::parse("DECODE_AND_MERGE_SLASHES"),
            Some(Decode)
        );
        assert_eq!(PathNormalization::parse("merge_slashes"), Option::None);
        assert_eq!(PathNormalization::default(), Base);
    }
}
