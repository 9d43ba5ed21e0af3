//! Reading certificates: PEM ↔ DER, and the facts operators ask about (who,
//! serial, validity, issuer) extracted with x509-parser.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use weft_core::Identity;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A certificate that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not PEM, or no certificate in it.
    #[error("no PEM certificate found in {0}")]
    NoPem(String),
    /// Not a parseable X.509 certificate.
    #[error("certificate is not valid X.509: {0}")]
    Parse(String),
    /// The certificate has no SPIFFE URI SAN, or more than one.
    #[error("certificate must carry exactly one spiffe:// URI SAN, found {0:?}")]
    Identity(Vec<String>),
}

/// Parses every certificate in a PEM text.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Parse(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(CertError::NoPem(what.to_owned()));
    }
    Ok(certs)
}

/// Encodes a DER certificate as PEM.
pub fn to_pem(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref().to_vec()))
}

/// Certificate parameters with an empty subject and `identity` as the only
/// SAN (a URI), the shape of every workload certificate and CSR.
pub fn spiffe_params(identity: &Identity) -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.to_string().try_into()?)];
    Ok(params)
}

/// What an operator wants to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject, as an RFC 4514 string (empty for workload certificates).
    pub subject: String,
    /// Issuer, as an RFC 4514 string.
    pub issuer: String,
    /// Serial number in lowercase hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// URI SANs (SPIFFE IDs).
    pub uris: Vec<String>,
}

impl CertInfo {
    /// Reads a DER certificate.
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, CertError> {
        let (_, cert) =
            X509Certificate::from_der(der.as_ref()).map_err(|e| CertError::Parse(e.to_string()))?;
        let uris = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some((*u).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
        Ok(CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_before: time(cert.validity().not_before.timestamp()),
            not_after: time(cert.validity().not_after.timestamp()),
            uris,
        })
    }

    /// The one SPIFFE identity the certificate carries.
    pub fn identity(&self) -> Result<Identity, CertError> {
        match self.uris.as_slice() {
            [one] => one
                .parse()
                .map_err(|_| CertError::Identity(self.uris.clone())),
            _ => Err(CertError::Identity(self.uris.clone())),
        }
    }

    /// Total validity period.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}
