//! A workload's certificate as a proxy holds it: key generated here (it
//! never leaves the host: a proxy with a state directory keeps it there,
//! 0600, to start again while the CA is unreachable), chain from the CA,
//! facts for `/certs`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use weft_core::Identity;

use crate::cert::{CertError, CertInfo, spiffe_params};
use crate::tls;

/// A freshly generated key and the CSR for it.
pub struct KeyAndCsr {
    key: KeyPair,
    /// The CSR, PEM-encoded, with the identity as its only URI SAN.
    pub csr_pem: String,
}

impl fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAndCsr").finish_non_exhaustive()
    }
}

/// Why a certificate could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadCertError {
    /// Key or CSR generation failed.
    #[error("cannot generate a key and CSR: {0}")]
    Generate(String),
    /// The CA returned nothing.
    #[error("the CA returned an empty certificate chain")]
    EmptyChain,
    /// The leaf cannot be read.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The CA issued a certificate for someone else.
    #[error("asked the CA for {asked} but received a certificate for {got}")]
    WrongIdentity {
        /// The identity requested.
        asked: String,
        /// The identity in the certificate.
        got: String,
    },
    /// The key does not suit rustls.
    #[error("the private key cannot be used for TLS: {0}")]
    Key(String),
}

impl KeyAndCsr {
    /// Generates an ECDSA P-256 key and a CSR for `identity`.
    pub fn generate(identity: &Identity) -> Result<Self, WorkloadCertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| WorkloadCertError::Generate(e.to_string()))?;
        let csr = spiffe_params(identity)
            .map_err(|e| WorkloadCertError::Generate(e.to_string()))?
            .serialize_request(&key)
            .map_err(|e| WorkloadCertError::Generate(e.to_string()))?;
        let csr_pem = csr
            .pem()
            .map_err(|e| WorkloadCertError::Generate(e.to_string()))?;
        Ok(KeyAndCsr { key, csr_pem })
    }

    /// Combines the key with the chain the CA returned (leaf first),
    /// checking the leaf is for `identity`.
    pub fn into_cert(
        self,
        identity: &Identity,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<WorkloadCert, WorkloadCertError> {
        let leaf = chain.first().ok_or(WorkloadCertError::EmptyChain)?;
        let info = CertInfo::parse(leaf)?;
        let got = info.identity()?;
        if &got != identity {
            return Err(WorkloadCertError::WrongIdentity {
                asked: identity.to_string(),
                got: got.to_string(),
            });
        }
        WorkloadCert::assemble(identity, info, chain, self.key.serialize_der())
    }
}

/// A private key's PKCS#8 bytes; never printed.
#[derive(Clone)]
struct KeyBytes(Arc<Vec<u8>>);

/// A workload identity's certificate chain and private key.
#[derive(Clone)]
pub struct WorkloadCert {
    identity: Identity,
    info: CertInfo,
    certified: Arc<CertifiedKey>,
    key: KeyBytes,
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is deliberately absent.
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.info.serial)
            .field("not_after", &self.info.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCert {
    fn assemble(
        identity: &Identity,
        info: CertInfo,
        chain: Vec<CertificateDer<'static>>,
        pkcs8: Vec<u8>,
    ) -> Result<WorkloadCert, WorkloadCertError> {
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.clone()));
        let signing_key = tls::provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| WorkloadCertError::Key(e.to_string()))?;
        Ok(WorkloadCert {
            identity: identity.clone(),
            info,
            certified: Arc::new(CertifiedKey::new(chain, signing_key)),
            key: KeyBytes(Arc::new(pkcs8)),
        })
    }

    /// The private key (PKCS#8) and the chain as PEM, for the proxy's own
    /// state directory only ([`crate::secret::write_private`]).
    pub fn to_pem(&self) -> String {
        let mut out = pem::encode(&pem::Pem::new("PRIVATE KEY", self.key.0.as_slice()));
        for cert in self.chain() {
            out.push_str(&pem::encode(&pem::Pem::new("CERTIFICATE", cert.as_ref())));
        }
        out
    }

    /// Reads back what [`WorkloadCert::to_pem`] wrote, checking the leaf is
    /// `identity`'s and the key is usable (not that it is still valid).
    pub fn from_pem(identity: &Identity, text: &str) -> Result<WorkloadCert, WorkloadCertError> {
        let blocks = pem::parse_many(text).map_err(|e| WorkloadCertError::Key(e.to_string()))?;
        let key = blocks
            .iter()
            .find(|b| b.tag() == "PRIVATE KEY")
            .ok_or_else(|| WorkloadCertError::Key("no PRIVATE KEY block".into()))?
            .contents()
            .to_vec();
        let chain: Vec<CertificateDer<'static>> = blocks
            .iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(|b| CertificateDer::from(b.contents().to_vec()))
            .collect();
        let leaf = chain.first().ok_or(WorkloadCertError::EmptyChain)?;
        let info = CertInfo::parse(leaf)?;
        let got = info.identity()?;
        if &got != identity {
            return Err(WorkloadCertError::WrongIdentity {
                asked: identity.to_string(),
                got: got.to_string(),
            });
        }
        WorkloadCert::assemble(identity, info, chain, key)
    }

    /// The identity it proves.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Facts about the leaf.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// Leaf followed by the chain.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// What rustls needs to present it.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// Whether it is valid at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.info.not_before <= now && now < self.info.not_after
    }

    /// Time left until expiry (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.info.not_after.duration_since(now).unwrap_or_default()
    }
}
