//! The certificate authority: a signing key and certificate (a self-made
//! root, or a user-provided root or intermediate), the trust bundle, and the
//! one function that turns a CSR into a workload certificate.
//!
//! Files in the CA directory, named as Istio's `cacerts` so existing ones
//! can be reused:
//!
//! | file | meaning |
//! |---|---|
//! | `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`, `root-cert.pem` | user-provided signing CA (root or intermediate), its chain up to the root, and the root |
//! | `root-cert.pem`, `root-key.pem` | the self-made root, created on first start when no `ca-cert.pem` exists |
//! | `trust-bundle.pem` | optional extra trusted roots (e.g. the next root, during a root rotation) |
//!
//! Key files must not be readable by other users; the CA refuses to start
//! otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use weft_core::Identity;

use crate::cert::{CertInfo, certs_from_pem, spiffe_params, to_pem};

/// Default lifetime of a workload certificate.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest lifetime a workload may ask for.
pub const MAX_WORKLOAD_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Lifetime of a self-made root.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why the CA cannot start or cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A CA file cannot be read or written.
    #[error("CA file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A key file is readable by other users.
    #[error(
        "refusing to use CA key {path}: group or other users can read it (mode {mode:o}); run: chmod 600 {path}"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A CA file holds something unusable.
    #[error("CA file {path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CSR cannot be parsed or its signature does not verify.
    #[error("certificate signing request is invalid: {0}")]
    BadCsr(String),
    /// The CSR asks for names other than the identity being issued.
    #[error(
        "certificate signing request asks for {requested:?}, but the certificate is for {identity}; a CSR must carry exactly that one URI SAN"
    )]
    SanMismatch {
        /// The identity the caller is entitled to.
        identity: String,
        /// What the CSR asked for.
        requested: Vec<String>,
    },
    /// The identity is in another trust domain.
    #[error("{identity} is not in this CA's trust domain {trust_domain}")]
    TrustDomain {
        /// The identity asked for.
        identity: String,
        /// This CA's trust domain.
        trust_domain: String,
    },
    /// Signing itself failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// How to find or make the CA's key material.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// Directory of the CA files (created if missing).
    pub dir: PathBuf,
    /// Trust domain of every identity this CA signs.
    pub trust_domain: String,
    /// Lifetime of workload certificates when the request asks for none.
    pub workload_ttl: Duration,
}

/// Validity of a certificate to issue.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Start.
    pub not_before: SystemTime,
    /// End.
    pub not_after: SystemTime,
}

impl Validity {
    /// From now, for `ttl`.
    pub fn from_now(ttl: Duration) -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now,
            not_after: now + ttl,
        }
    }
}

/// A loaded certificate authority.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate followed by its chain up to and including the root.
    chain: Vec<CertificateDer<'static>>,
    /// Every root that workloads should trust.
    bundle: Vec<CertificateDer<'static>>,
    signing_not_after: SystemTime,
    trust_domain: String,
    workload_ttl: Duration,
    /// DNS names the control plane's own certificate carries besides its
    /// SPIFFE ID (clients that check the server by name, as ztunnel does
    /// with `istiod.istio-system.svc`).
    server_names: Vec<String>,
    /// The identity whose certificates carry `server_names`.
    server: Option<Identity>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("chain_len", &self.chain.len())
            .field("bundle_len", &self.bundle.len())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the CA from `opts.dir`, creating a new root there on first start.
    pub fn load_or_create(opts: &CaOptions) -> Result<Self, CaError> {
        let dir = &opts.dir;
        // A directory weft makes holds the root key: 0700. One an operator
        // provides (plugged-in `cacerts`, perhaps read-only) is left as is.
        if !dir.exists() {
            crate::secret::private_dir(dir).map_err(|e| bad(dir, e))?;
        }
        let plugged = dir.join("ca-cert.pem");
        let (issuer, chain, signing_not_after) = if plugged.exists() {
            load_plugged(dir)?
        } else if dir.join("root-key.pem").exists() {
            load_self_made(dir)?
        } else {
            create_root(dir, &opts.trust_domain)?
        };
        let mut bundle = vec![chain.last().cloned().ok_or_else(|| CaError::BadFile {
            path: dir.clone(),
            reason: "no certificates".into(),
        })?];
        let extra = dir.join("trust-bundle.pem");
        if extra.exists() {
            for root in certs_from_pem(&read(&extra)?, &extra.display().to_string())
                .map_err(|e| bad(&extra, e))?
            {
                if !bundle.contains(&root) {
                    bundle.push(root);
                }
            }
        }
        tracing::info!(dir = %dir.display(), trust_domain = %opts.trust_domain, roots = bundle.len(), "certificate authority ready");
        Ok(Authority {
            issuer,
            chain,
            bundle,
            signing_not_after,
            trust_domain: opts.trust_domain.clone(),
            workload_ttl: opts.workload_ttl,
            server_names: Vec::new(),
            server: None,
        })
    }

    /// Certificates for `server` (the control plane's own identity) also
    /// name these DNS names (checked to be DNS names; the first bad one is
    /// the error).
    pub fn with_server_names(
        mut self,
        server: Identity,
        names: Vec<String>,
    ) -> Result<Self, CaError> {
        for name in &names {
            weft_core::names::check_subdomain(name).map_err(|e| {
                CaError::Sign(format!("server name {name:?} is not a DNS name: {e}"))
            })?;
        }
        self.server_names = names;
        self.server = Some(server);
        Ok(self)
    }

    /// The roots workloads should trust.
    pub fn trust_bundle(&self) -> &[CertificateDer<'static>] {
        &self.bundle
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Signs a PEM CSR for `identity`. The CSR's signature must verify and
    /// its only SAN must be `identity`'s URI. `ttl` of `None` means the
    /// default; longer than the maximum is capped. Returns the leaf
    /// followed by the chain up to the root.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Option<Duration>,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        if requested != [identity.to_string()] {
            return Err(CaError::SanMismatch {
                identity: identity.to_string(),
                requested,
            });
        }
        let ttl = ttl
            .filter(|t| !t.is_zero())
            .unwrap_or(self.workload_ttl)
            .min(MAX_WORKLOAD_TTL);
        self.issue(&csr.public_key, identity, Validity::from_now(ttl))
    }

    /// Issues a workload certificate for a public key with explicit
    /// validity (capped at the signing certificate's own expiry). Used by
    /// [`Authority::sign_csr`] and by tests that need unusual validity.
    pub fn issue(
        &self,
        public_key: &impl PublicKeyData,
        identity: &Identity,
        validity: Validity,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(CaError::TrustDomain {
                identity: identity.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let mut params = spiffe_params(identity).map_err(|e| CaError::Sign(e.to_string()))?;
        if self.server.as_ref() == Some(identity) {
            for name in &self.server_names {
                params.subject_alt_names.push(SanType::DnsName(
                    name.as_str()
                        .try_into()
                        .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?,
                ));
            }
        }
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.min(self.signing_not_after).into();
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let mut out = vec![leaf.der().clone()];
        out.extend(self.chain.iter().cloned());
        Ok(out)
    }
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes =
        crate::secret::random_bytes::<16>().map_err(|e| CaError::Sign(e.to_string()))?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    Ok(SerialNumber::from_slice(&bytes))
}

fn read(path: &Path) -> Result<Vec<u8>, CaError> {
    std::fs::read(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

fn bad(path: &Path, reason: impl ToString) -> CaError {
    CaError::BadFile {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Reads a private key, refusing one that group or other users can read.
fn read_key(path: &Path) -> Result<KeyPair, CaError> {
    crate::secret::check_private(path).map_err(|e| match e {
        crate::secret::SecretError::Exposed { path, mode } => {
            CaError::KeyPermissions { path, mode }
        }
        other => bad(path, other),
    })?;
    let pem = String::from_utf8(read(path)?).map_err(|_| bad(path, "not PEM text"))?;
    // The error from the key parser never includes key bytes.
    KeyPair::from_pem(&pem).map_err(|e| bad(path, format!("not a usable private key: {e}")))
}

fn write_private(path: &Path, contents: &str) -> Result<(), CaError> {
    crate::secret::write_private(path, contents.as_bytes()).map_err(|e| bad(path, e))
}

type Loaded = (
    Issuer<'static, KeyPair>,
    Vec<CertificateDer<'static>>,
    SystemTime,
);

fn issuer_from(
    cert: &CertificateDer<'static>,
    key: KeyPair,
    path: &Path,
) -> Result<Loaded, CaError> {
    let info = CertInfo::parse(cert).map_err(|e| bad(path, e))?;
    // A mistaken or tampered plug-in (a Secret anyone with write access to
    // the namespace could change) must not start signing unverifiable
    // certificates: the key must be this certificate's, and it a CA.
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| bad(path, e))?;
    if parsed.tbs_certificate.subject_pki.raw
        != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    {
        return Err(bad(
            path,
            "the private key does not belong to this certificate",
        ));
    }
    if !parsed.is_ca() {
        return Err(bad(
            path,
            "not a CA certificate (basicConstraints CA:TRUE missing)",
        ));
    }
    let issuer = Issuer::from_ca_cert_der(cert, key).map_err(|e| bad(path, e))?;
    Ok((issuer, vec![cert.clone()], info.not_after))
}

fn load_plugged(dir: &Path) -> Result<Loaded, CaError> {
    let cert_path = dir.join("ca-cert.pem");
    let key = read_key(&dir.join("ca-key.pem"))?;
    let cert = certs_from_pem(&read(&cert_path)?, "ca-cert.pem")
        .map_err(|e| bad(&cert_path, e))?
        .remove(0);
    let (issuer, mut chain, not_after) = issuer_from(&cert, key, &cert_path)?;
    let chain_path = dir.join("cert-chain.pem");
    if chain_path.exists() {
        for c in certs_from_pem(&read(&chain_path)?, "cert-chain.pem")
            .map_err(|e| bad(&chain_path, e))?
        {
            if !chain.contains(&c) {
                chain.push(c);
            }
        }
    }
    let root_path = dir.join("root-cert.pem");
    if root_path.exists() {
        let root = certs_from_pem(&read(&root_path)?, "root-cert.pem")
            .map_err(|e| bad(&root_path, e))?
            .remove(0);
        if chain.last() != Some(&root) {
            chain.push(root);
        }
    }
    Ok((issuer, chain, not_after))
}

fn load_self_made(dir: &Path) -> Result<Loaded, CaError> {
    let cert_path = dir.join("root-cert.pem");
    let key = read_key(&dir.join("root-key.pem"))?;
    let cert = certs_from_pem(&read(&cert_path)?, "root-cert.pem")
        .map_err(|e| bad(&cert_path, e))?
        .remove(0);
    issuer_from(&cert, key, &cert_path)
}

/// Makes a new ECDSA P-256 root, writes it (key mode 0600) and returns it.
fn create_root(dir: &Path, trust_domain: &str) -> Result<Loaded, CaError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| CaError::Sign(e.to_string()))?;
    let params = root_params(trust_domain, Validity::from_now(ROOT_TTL))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaError::Sign(e.to_string()))?;
    write_private(&dir.join("root-key.pem"), &key.serialize_pem())?;
    std::fs::write(dir.join("root-cert.pem"), cert.pem()).map_err(|source| CaError::Io {
        path: dir.join("root-cert.pem"),
        source,
    })?;
    tracing::info!(dir = %dir.display(), "created a new root CA (ECDSA P-256)");
    let der = cert.der().clone();
    let not_after = SystemTime::now() + ROOT_TTL;
    Ok((Issuer::new(params, key), vec![der], not_after))
}

/// Parameters of a root or intermediate CA certificate.
pub fn root_params(trust_domain: &str, validity: Validity) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    // A unique name per root: path building matches issuers by name, so two
    // roots trusted side by side during a rotation must not share one.
    let tag = crate::secret::random_bytes::<4>().map_err(|e| CaError::Sign(e.to_string()))?;
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    dn.push(DnType::CommonName, format!("weft root CA {tag}"));
    params.distinguished_name = dn;
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.serial_number = Some(random_serial()?);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// PEM of every certificate, concatenated.
pub fn chain_pem(chain: &[CertificateDer<'_>]) -> String {
    chain.iter().map(to_pem).collect()
}

/// The authority used in-process as a [`crate::CaClient`] (the control
/// plane's own certificates, tests, benchmarks).
impl crate::manager::CaClient for Authority {
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> crate::manager::SignFuture<'a> {
        Box::pin(async move {
            self.sign_csr(csr_pem, identity, Some(ttl))
                .map_err(|e| crate::manager::FetchError(e.to_string()))
        })
    }
}

/// Lifetime of an intermediate made by [`create_intermediate`] unless
/// told otherwise.
pub const INTERMEDIATE_TTL: Duration = Duration::from_secs(2 * 365 * 24 * 3600);

/// Makes a root CA for a mesh of several clusters in `dir` (created 0700
/// if absent): `root-cert.pem`, and `root-key.pem` (0600) to keep offline
/// once each cluster's intermediate is made. An existing root there is
/// never replaced.
pub fn create_shared_root(dir: &Path, trust_domain: &str) -> Result<(), CaError> {
    if dir.join("root-key.pem").exists() || dir.join("root-cert.pem").exists() {
        return Err(bad(
            dir,
            "already holds a root (root-cert.pem or root-key.pem); refusing to replace it",
        ));
    }
    crate::secret::private_dir(dir).map_err(|e| bad(dir, e))?;
    create_root(dir, trust_domain).map(|_| ())
}

/// Makes the CA of one cluster, `cluster`, as an intermediate of the root
/// in `root_dir` (its `root-cert.pem` and `root-key.pem`), and writes it
/// to `out` (created 0700) in Istio's plug-in layout: `ca-cert.pem`,
/// `ca-key.pem` (0600), `cert-chain.pem` (the intermediate, then the
/// root) and `root-cert.pem`. `weft control --ca-dir <out>` (or the
/// `cacerts` Secret) then signs with it, and every cluster made this way
/// trusts the others' workloads.
pub fn create_intermediate(
    root_dir: &Path,
    out: &Path,
    trust_domain: &str,
    cluster: &str,
    ttl: Duration,
) -> Result<(), CaError> {
    if out.join("ca-key.pem").exists() {
        return Err(bad(
            out,
            "already holds a CA (ca-key.pem); refusing to replace it",
        ));
    }
    let (root, chain, root_not_after) = load_self_made(root_dir)?;
    let validity = Validity::from_now(ttl);
    if validity.not_after > root_not_after {
        return Err(bad(
            root_dir,
            format!(
                "the root expires at {} — before the {}-day intermediate would; make a shorter one (--days) or a new root",
                crate::manager::rfc3339(root_not_after),
                ttl.as_secs() / 86400
            ),
        ));
    }
    let mut params = root_params(trust_domain, validity)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(
        DnType::CommonName,
        format!("weft intermediate CA {cluster}"),
    );
    params.distinguished_name = dn;
    // It signs workload certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| CaError::Sign(e.to_string()))?;
    let cert = params
        .signed_by(&key, &root)
        .map_err(|e| CaError::Sign(e.to_string()))?;
    let root_pem = chain_pem(&chain);
    crate::secret::private_dir(out).map_err(|e| bad(out, e))?;
    write_private(&out.join("ca-key.pem"), &key.serialize_pem())?;
    for (file, text) in [
        ("ca-cert.pem", cert.pem()),
        ("cert-chain.pem", format!("{}{root_pem}", cert.pem())),
        ("root-cert.pem", root_pem.clone()),
    ] {
        std::fs::write(out.join(file), text).map_err(|source| CaError::Io {
            path: out.join(file),
            source,
        })?;
    }
    tracing::info!(out = %out.display(), cluster, "created an intermediate CA");
    Ok(())
}
