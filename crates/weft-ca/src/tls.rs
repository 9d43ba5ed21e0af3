//! rustls configurations for weft's mutual TLS: TLS 1.3 only, AES-GCM
//! suites, the aws-lc-rs provider, chains verified against a (rotatable)
//! [`TrustBundle`], and SPIFFE identities checked by custom verifiers:
//!
//! - a client accepts a server only if its identity is one of those
//!   expected for the destination ([`SpiffeServerVerifier`]);
//! - a server accepts a client only from its own trust domain
//!   ([`SpiffeClientVerifier`]); authorization by identity happens later.

use std::fmt;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, CipherSuite, ClientConfig, DigitallySignedStruct, DistinguishedName,
    OtherError, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use weft_core::Identity;

use crate::cert::{CertError, CertInfo};

/// ALPN protocol spoken inside weft's mTLS (HTTP/2, as HBONE requires).
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider every weft TLS config uses: aws-lc-rs restricted to
/// the TLS 1.3 AES-GCM suites.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = rustls::crypto::aws_lc_rs::default_provider();
            p.cipher_suites.retain(|s| {
                matches!(
                    s.suite(),
                    CipherSuite::TLS13_AES_128_GCM_SHA256 | CipherSuite::TLS13_AES_256_GCM_SHA384
                )
            });
            Arc::new(p)
        })
        .clone()
}

/// A certificate presented by a peer was not acceptable.
#[derive(thiserror::Error)]
pub enum PeerError {
    /// The peer is someone other than expected.
    #[error("peer presented identity {got}, but expected {expected}")]
    Unexpected {
        /// The identity in the peer's certificate.
        got: String,
        /// The identities acceptable for this destination.
        expected: String,
    },
    /// The peer is in another trust domain.
    #[error("peer identity {got} is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The identity in the peer's certificate.
        got: String,
        /// Our trust domain.
        trust_domain: String,
    },
    /// The peer's certificate names no usable identity.
    #[error("peer certificate has no usable identity: {0}")]
    NoIdentity(#[from] CertError),
    /// The peer sent no certificate.
    #[error("peer sent no certificate")]
    NoCertificate,
}

// rustls prints wrapped errors with `{:?}`: make that the operator's message.
impl fmt::Debug for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn reject(e: PeerError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Roots a proxy trusts. Shared and swappable: replacing the roots affects
/// every later handshake, which is how a root is rotated without an outage
/// (trust `[old, new]`, move every workload to `new`, then trust `[new]`).
#[derive(Clone)]
pub struct TrustBundle(Arc<ArcSwap<Roots>>);

struct Roots {
    ders: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustBundle({} roots)", self.0.load().ders.len())
    }
}

impl TrustBundle {
    /// A bundle of `roots`.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, CertError> {
        Ok(TrustBundle(Arc::new(ArcSwap::from_pointee(Roots::new(
            roots,
        )?))))
    }

    /// Replaces the roots for every later handshake.
    pub fn set(&self, roots: Vec<CertificateDer<'static>>) -> Result<(), CertError> {
        self.0.store(Arc::new(Roots::new(roots)?));
        Ok(())
    }

    /// The current roots.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.0.load().ders.clone()
    }

    /// Whether `chain` (leaf first) chains to these roots now: the leaf's
    /// identity, or why not.
    pub fn check_chain(&self, chain: &[CertificateDer<'_>]) -> Result<Identity, String> {
        let (leaf, intermediates) = chain.split_first().ok_or("empty chain")?;
        self.verify(
            leaf,
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
        )
        .map_err(|e| e.to_string())
    }

    /// Verifies a chain for `usage` at `now`, returning the leaf's identity.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<Identity, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        let roots = self.0.load();
        cert.verify_for_usage(
            provider().signature_verification_algorithms.all,
            &roots.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;
        CertInfo::parse(end_entity)
            .and_then(|info| info.identity())
            .map_err(|e| reject(PeerError::NoIdentity(e)))
    }
}

impl Roots {
    fn new(ders: Vec<CertificateDer<'static>>) -> Result<Self, CertError> {
        let anchors = ders
            .iter()
            .map(|der| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|a| a.to_owned())
                    .map_err(|e| CertError::Parse(format!("trust bundle root: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Roots { ders, anchors })
    }
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    rustls::Error::InvalidCertificate(match e {
        E::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        E::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    })
}

fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    tls13: bool,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let algs = &provider().signature_verification_algorithms;
    if tls13 {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    } else {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }
}

/// The handshake-signature methods both verifiers share: TLS 1.3 (and,
/// for completeness, 1.2) signatures checked with the provider's algorithms.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_signature(message, cert, dss, false)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_signature(message, cert, dss, true)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// Client side: accepts a server whose chain verifies and whose identity is
/// one of `expected`.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundle: TrustBundle,
    expected: Vec<Identity>,
}

impl SpiffeServerVerifier {
    /// Accepts only servers proving one of `expected`.
    pub fn new(bundle: TrustBundle, expected: Vec<Identity>) -> Self {
        SpiffeServerVerifier { bundle, expected }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = self.bundle.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        if self.expected.contains(&got) {
            Ok(ServerCertVerified::assertion())
        } else {
            let expected: Vec<String> = self.expected.iter().map(ToString::to_string).collect();
            Err(reject(PeerError::Unexpected {
                got: got.to_string(),
                expected: expected.join(" or "),
            }))
        }
    }

    handshake_signatures!();
}

/// Server side: accepts a client whose chain verifies and whose identity is
/// in `trust_domain`. With `mandatory` false, clients without a certificate
/// are let through (for bootstrap-token authentication).
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundle: TrustBundle,
    trust_domain: String,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    /// Requires a client certificate from `trust_domain`.
    pub fn new(bundle: TrustBundle, trust_domain: impl Into<String>) -> Self {
        SpiffeClientVerifier {
            bundle,
            trust_domain: trust_domain.into(),
            mandatory: true,
        }
    }

    /// Lets clients without a certificate connect.
    pub fn optional(mut self) -> Self {
        self.mandatory = false;
        self
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; sending none keeps the handshake small.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let got = self.bundle.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        if got.trust_domain() == self.trust_domain {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(reject(PeerError::ForeignTrustDomain {
                got: got.to_string(),
                trust_domain: self.trust_domain.clone(),
            }))
        }
    }

    handshake_signatures!();
}

/// Where a config gets the certificate to present, asked at every handshake
/// so that a rotated certificate is used by the next connection.
pub trait CertSource: Send + Sync + fmt::Debug {
    /// The certificate to present now, if any.
    fn current(&self) -> Option<Arc<CertifiedKey>>;
}

/// A fixed certificate.
#[derive(Debug, Clone)]
pub struct Fixed(pub Arc<CertifiedKey>);

impl CertSource for Fixed {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[derive(Debug)]
struct Resolver(Arc<dyn CertSource>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the TLS configuration: {0}")]
pub struct ConfigError(#[from] rustls::Error);

/// A client config presenting `cert` (if any) and accepting only servers
/// proving one of `expected`.
pub fn client_config(
    cert: Option<Arc<dyn CertSource>>,
    bundle: TrustBundle,
    expected: Vec<Identity>,
) -> Result<ClientConfig, ConfigError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(bundle, expected)));
    let mut config = match cert {
        Some(source) => builder.with_client_cert_resolver(Arc::new(Resolver(source))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A server config presenting `cert` and checking clients with `verifier`.
pub fn server_config(
    cert: Arc<dyn CertSource>,
    verifier: SpiffeClientVerifier,
) -> Result<ServerConfig, ConfigError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(Resolver(cert)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The identity a peer proved in a completed handshake.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Result<Identity, PeerError> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or(PeerError::NoCertificate)?;
    Ok(CertInfo::parse(leaf)?.identity()?)
}
