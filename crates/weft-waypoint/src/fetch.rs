//! One HTTP(S) GET of a document the proxy needs — an issuer's keys
//! (`policy/jwks.rs`), a plugin's module
//! (`extension/modules.rs`) — over HTTP/1.1, TLS for `https`,
//! with a cap on what it reads: its own client, so a slow or huge answer
//! costs one task and at most the cap.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

/// Why a fetch failed, naming the address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The address is not a usable URL.
    #[error("{0} is not an http(s) URL with a host")]
    Url(String),
    /// TCP or TLS failed.
    #[error("cannot reach {0}: {1}")]
    Connect(String, String),
    /// The HTTP exchange failed.
    #[error("fetching {0}: {1}")]
    Http(String, String),
    /// Not a 2xx answer.
    #[error("{0} answered {1}")]
    Status(String, u16),
    /// Larger than the cap.
    #[error("{0} sent more than {1} bytes")]
    TooLarge(String, usize),
}

/// A byte stream, TLS or not.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// GETs `uri` asking for `accept`, reading at most `limit` bytes; the
/// body and the answer's `content-type`.
pub async fn get(
    uri: &str,
    tls: &Arc<rustls::ClientConfig>,
    accept: &str,
    limit: usize,
) -> Result<(Bytes, Option<String>), FetchError> {
    let bad_url = || FetchError::Url(uri.to_owned());
    let parsed: http::Uri = uri.parse().map_err(|_| bad_url())?;
    let host = parsed.host().ok_or_else(bad_url)?.to_owned();
    let https = match parsed.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad_url()),
    };
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    let connect = |e: &dyn std::fmt::Display| FetchError::Connect(uri.to_owned(), e.to_string());
    let http = |e: &dyn std::fmt::Display| FetchError::Http(uri.to_owned(), e.to_string());
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((bare, port))
        .await
        .map_err(|e| connect(&e))?;
    let io: Box<dyn Io> = if https {
        let name = ServerName::try_from(bare.to_owned()).map_err(|e| connect(&e))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| connect(&e))?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| http(&e))?;
    tokio::spawn(connection);
    let request = http::Request::get(parsed.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            parsed.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(http::header::ACCEPT, accept)
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(&e))?;
    let response = sender.send_request(request).await.map_err(|e| http(&e))?;
    if !response.status().is_success() {
        return Err(FetchError::Status(
            uri.to_owned(),
            response.status().as_u16(),
        ));
    }
    if response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > limit)
    {
        return Err(FetchError::TooLarge(uri.to_owned(), limit));
    }
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                FetchError::TooLarge(uri.to_owned(), limit)
            } else {
                http(&e)
            }
        })?
        .to_bytes();
    Ok((body, content_type))
}

/// A TLS client configuration trusting the system's roots and
/// `extra_roots`, speaking HTTP/1.1.
pub fn client_tls(
    extra_roots: &[rustls_pki_types::CertificateDer<'static>],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots.add_parsable_certificates(extra_roots.iter().cloned());
    // The versions are rustls' defaults, so building cannot fail.
    let mut tls = match rustls::ClientConfig::builder_with_provider(weft_ca::tls::provider())
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(tls)
}
