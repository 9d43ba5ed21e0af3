//! SOCKS5 (RFC 1928) for apps that cannot be captured: CONNECT only, no
//! authentication. The parser is a pure function over bytes so it can be
//! table-tested and fuzzed; the proxy reads exactly the bytes it needs.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where a SOCKS client wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address.
    Addr(SocketAddr),
    /// A hostname and port.
    Host(String, u16),
}

/// SOCKS5 reply codes weft uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    /// The tunnel is open.
    Succeeded = 0,
    /// Something failed.
    GeneralFailure = 1,
    /// Policy or registry refuses the destination.
    NotAllowed = 2,
    /// No endpoint could be reached.
    HostUnreachable = 4,
    /// Only CONNECT is supported.
    CommandNotSupported = 7,
    /// Unknown address type.
    AddressTypeNotSupported = 8,
}

/// A SOCKS exchange that cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SocksError {
    /// Not SOCKS version 5.
    #[error("not a SOCKS5 client (version byte {0})")]
    Version(u8),
    /// The client offers no method weft accepts.
    #[error("the client offers no \"no authentication\" method")]
    NoAcceptableMethod,
    /// A command other than CONNECT.
    #[error("SOCKS command {0} is not supported (only CONNECT)")]
    Command(u8),
    /// An address type other than IPv4, IPv6 or domain name.
    #[error("SOCKS address type {0} is not supported")]
    AddressType(u8),
    /// A domain name that is not UTF-8 or is empty.
    #[error("SOCKS domain name is not a valid hostname")]
    BadHost,
    /// The connection ended mid-request.
    #[error("the SOCKS client closed the connection: {0}")]
    Io(String),
}

impl SocksError {
    /// The reply to send for this error, if any.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            SocksError::Command(_) => Some(Reply::CommandNotSupported),
            SocksError::AddressType(_) => Some(Reply::AddressTypeNotSupported),
            SocksError::BadHost => Some(Reply::GeneralFailure),
            _ => None,
        }
    }
}

/// Parses a greeting (`VER NMETHODS METHODS…`): accepts when method 0
/// (no authentication) is offered.
pub fn parse_greeting(bytes: &[u8]) -> Result<(), SocksError> {
    match bytes {
        [5, n, methods @ ..] if methods.len() == usize::from(*n) => {
            if methods.contains(&0) {
                Ok(())
            } else {
                Err(SocksError::NoAcceptableMethod)
            }
        }
        [v, ..] if *v != 5 => Err(SocksError::Version(*v)),
        _ => Err(SocksError::Io("short greeting".into())),
    }
}

/// Parses a request (`VER CMD RSV ATYP ADDR PORT`).
pub fn parse_request(bytes: &[u8]) -> Result<Target, SocksError> {
    let [version, command, _reserved, atyp, rest @ ..] = bytes else {
        return Err(SocksError::Io("short request".into()));
    };
    if *version != 5 {
        return Err(SocksError::Version(*version));
    }
    if *command != 1 {
        return Err(SocksError::Command(*command));
    }
    let port = |b: &[u8]| -> Result<u16, SocksError> {
        match b {
            [hi, lo] => Ok(u16::from_be_bytes([*hi, *lo])),
            _ => Err(SocksError::Io("bad port".into())),
        }
    };
    match atyp {
        1 => match rest {
            [a, b, c, d, p @ ..] => Ok(Target::Addr(SocketAddr::new(
                Ipv4Addr::new(*a, *b, *c, *d).into(),
                port(p)?,
            ))),
            _ => Err(SocksError::Io("short IPv4 address".into())),
        },
        4 if rest.len() == 18 => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&rest[..16]);
            Ok(Target::Addr(SocketAddr::new(
                Ipv6Addr::from(ip).into(),
                port(&rest[16..])?,
            )))
        }
        4 => Err(SocksError::Io("short IPv6 address".into())),
        3 => match rest {
            [len, tail @ ..] if tail.len() == usize::from(*len) + 2 && *len > 0 => {
                let (name, p) = tail.split_at(usize::from(*len));
                let host = std::str::from_utf8(name).map_err(|_| SocksError::BadHost)?;
                if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(SocksError::BadHost);
                }
                Ok(Target::Host(host.to_ascii_lowercase(), port(p)?))
            }
            _ => Err(SocksError::BadHost),
        },
        other => Err(SocksError::AddressType(*other)),
    }
}

/// Encodes a reply (bound address 0.0.0.0:0).
pub fn reply_bytes(reply: Reply) -> [u8; 10] {
    [5, reply as u8, 0, 1, 0, 0, 0, 0, 0, 0]
}

/// Reads the handshake from a client and returns its target. On a
/// protocol error the right reply (if any) is sent before returning.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<Target, SocksError> {
    let io = |e: std::io::Error| SocksError::Io(e.to_string());
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.map_err(io)?;
    let mut methods = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut methods).await.map_err(io)?;
    let mut greeting = head.to_vec();
    greeting.extend_from_slice(&methods);
    if let Err(e) = parse_greeting(&greeting) {
        if e == SocksError::NoAcceptableMethod {
            let _ = s.write_all(&[5, 0xff]).await;
        }
        return Err(e);
    }
    s.write_all(&[5, 0]).await.map_err(io)?;
    let mut fixed = [0u8; 4];
    s.read_exact(&mut fixed).await.map_err(io)?;
    let rest_len = match fixed[3] {
        1 => 6,
        4 => 18,
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await.map_err(io)?;
            let mut request = fixed.to_vec();
            request.push(len[0]);
            let mut tail = vec![0u8; usize::from(len[0]) + 2];
            s.read_exact(&mut tail).await.map_err(io)?;
            request.extend_from_slice(&tail);
            return finish(s, parse_request(&request)).await;
        }
        _ => 0,
    };
    let mut request = fixed.to_vec();
    let mut tail = vec![0u8; rest_len];
    s.read_exact(&mut tail).await.map_err(io)?;
    request.extend_from_slice(&tail);
    finish(s, parse_request(&request)).await
}

async fn finish<S: AsyncWrite + Unpin>(
    s: &mut S,
    parsed: Result<Target, SocksError>,
) -> Result<Target, SocksError> {
    if let Err(e) = &parsed
        && let Some(reply) = e.reply()
    {
        let _ = s.write_all(&reply_bytes(reply)).await;
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings() {
        assert_eq!(parse_greeting(&[5, 1, 0]), Ok(()));
        assert_eq!(parse_greeting(&[5, 2, 2, 0]), Ok(()));
        assert_eq!(
            parse_greeting(&[5, 1, 2]),
            Err(SocksError::NoAcceptableMethod)
        );
        assert_eq!(parse_greeting(&[4, 1, 0]), Err(SocksError::Version(4)));
        assert!(parse_greeting(&[5, 3, 0]).is_err());
        assert!(parse_greeting(&[]).is_err());
    }

    #[test]
    fn requests() {
        let cases: Vec<(Vec<u8>, Result<Target, SocksError>)> = vec![
            (
                vec![5, 1, 0, 1, 10, 0, 0, 7, 0x1f, 0x90],
                Ok(Target::Addr("10.0.0.7:8080".parse().expect("addr"))),
            ),
            (
                [vec![5, 1, 0, 3, 11], b"Orders.Shop".to_vec(), vec![0, 80]].concat(),
                Ok(Target::Host("orders.shop".into(), 80)),
            ),
            (
                [vec![5, 1, 0, 4], vec![0; 15], vec![1, 0, 80]].concat(),
                Ok(Target::Addr("[::1]:80".parse().expect("addr"))),
            ),
            (
                vec![5, 2, 0, 1, 10, 0, 0, 7, 0, 80],
                Err(SocksError::Command(2)),
            ),
            (vec![5, 1, 0, 9, 0, 0], Err(SocksError::AddressType(9))),
            (vec![5, 1, 0, 3, 0, 0, 80], Err(SocksError::BadHost)),
            (vec![5, 1, 0, 3, 5, b'a', 0, 80], Err(SocksError::BadHost)),
            (
                [vec![5, 1, 0, 3, 3], b"a b".to_vec(), vec![0, 80]].concat(),
                Err(SocksError::BadHost),
            ),
            (
                vec![5, 1, 0, 1, 10, 0],
                Err(SocksError::Io("short IPv4 address".into())),
            ),
            (
                vec![4, 1, 0, 1, 10, 0, 0, 7, 0, 80],
                Err(SocksError::Version(4)),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse_request(&bytes), want, "{bytes:?}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap stand-in for a fuzzer: every prefix of some messages and
        // pseudo-random garbage.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..64 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        (seed & 0xff) as u8
                    })
                    .collect();
                let _ = parse_greeting(&bytes);
                let _ = parse_request(&bytes);
            }
        }
    }
}
