//! The certificate authority: root creation and reuse, key-file safety,
//! user-provided intermediates, CSR checks, and chains that OpenSSL — a TLS
//! implementation nobody here wrote — accepts.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rcgen::{
    CertificateParams, DistinguishedName, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256, SanType,
};
use weft_ca::authority::{Validity, chain_pem, root_params};
use weft_ca::cert::CertInfo;
use weft_ca::{Authority, CaError, CaOptions, KeyAndCsr};

const TD: &str = "cluster.local";

fn options(dir: &std::path::Path) -> CaOptions {
    CaOptions {
        dir: dir.to_owned(),
        trust_domain: TD.into(),
        workload_ttl: Duration::from_secs(24 * 3600),
    }
}

#[test]
fn root_is_created_once_with_a_private_key_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ca");
    let first = Authority::load_or_create(&options(&dir)).expect("create");
    let key = dir.join("root-key.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let second = Authority::load_or_create(&options(&dir)).expect("reload");
    assert_eq!(
        first.trust_bundle(),
        second.trust_bundle(),
        "the same root is reused"
    );
    let info = CertInfo::parse(&first.trust_bundle()[0]).expect("root");
    assert!(info.subject.contains("weft root CA"), "{}", info.subject);
    assert!(info.lifetime() > Duration::from_secs(9 * 365 * 24 * 3600));
}

#[cfg(unix)]
#[test]
fn readable_key_is_refused_and_a_new_ca_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ca");
    Authority::load_or_create(&options(&dir)).expect("create");
    let key = dir.join("root-key.pem");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the CA directory weft made");
    assert_eq!(mode(&key), 0o600, "the root key");
    // Group-readable is refused as world-readable is.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let err = Authority::load_or_create(&options(&dir)).expect_err("refused");
    assert!(matches!(err, CaError::KeyPermissions { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("root-key.pem") && msg.contains("chmod 600"),
        "{msg}"
    );
}

#[test]
fn csr_checks() {
    let ca = TestCa::new(TD);
    let orders = id(TD, "shop", "orders");
    let payments = id(TD, "shop", "payments");
    let request = KeyAndCsr::generate(&orders).expect("csr");

    // The right identity: leaf + root, URI SAN only, default lifetime.
    let chain = ca
        .authority
        .sign_csr(&request.csr_pem, &orders, None)
        .expect("signed");
    assert_eq!(chain.len(), 2);
    let info = CertInfo::parse(&chain[0]).expect("leaf");
    assert_eq!(info.uris, [orders.to_string()]);
    assert_eq!(
        info.lifetime(),
        Duration::from_secs(3600),
        "TestCa default ttl"
    );
    let short = ca
        .authority
        .sign_csr(&request.csr_pem, &orders, Some(Duration::from_secs(5)))
        .expect("signed");
    assert_eq!(
        CertInfo::parse(&short[0]).expect("leaf").lifetime(),
        Duration::from_secs(5)
    );
    let capped = ca
        .authority
        .sign_csr(
            &request.csr_pem,
            &orders,
            Some(Duration::from_secs(10 * 365 * 86400)),
        )
        .expect("signed");
    assert_eq!(
        CertInfo::parse(&capped[0]).expect("leaf").lifetime(),
        weft_ca::authority::MAX_WORKLOAD_TTL
    );

    // A CSR whose SAN differs from the identity asked for is refused, naming both.
    let err = ca
        .authority
        .sign_csr(&request.csr_pem, &payments, None)
        .expect_err("wrong SAN");
    assert!(matches!(err, CaError::SanMismatch { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains(&orders.to_string()) && msg.contains(&payments.to_string()),
        "{msg}"
    );

    // Extra SANs are refused too.
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![
        SanType::URI(orders.to_string().try_into().expect("uri")),
        SanType::DnsName("orders.shop".try_into().expect("dns")),
    ];
    let extra = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    assert!(matches!(
        ca.authority.sign_csr(&extra, &orders, None),
        Err(CaError::SanMismatch { .. })
    ));

    // Garbage and a tampered CSR are refused.
    assert!(matches!(
        ca.authority.sign_csr("not a csr", &orders, None),
        Err(CaError::BadCsr(_))
    ));
    let tampered = request.csr_pem.replacen("MII", "MIJ", 1);
    assert!(ca.authority.sign_csr(&tampered, &orders, None).is_err());

    // Another trust domain is refused.
    let foreign = id("other.example", "shop", "orders");
    let foreign_csr = KeyAndCsr::generate(&foreign).expect("csr");
    assert!(matches!(
        ca.authority.sign_csr(&foreign_csr.csr_pem, &foreign, None),
        Err(CaError::TrustDomain { .. })
    ));
}

#[test]
fn user_provided_intermediate_signs_with_full_chain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cacerts");
    std::fs::create_dir_all(&dir).expect("dir");
    // An operator's root and an intermediate made with it.
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let root_params =
        root_params(TD, Validity::from_now(Duration::from_secs(86400 * 365))).expect("params");
    let root = root_params.self_signed(&root_key).expect("root");
    let inter_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let inter_params =
        weft_ca::authority::root_params(TD, Validity::from_now(Duration::from_secs(86400 * 30)))
            .expect("params");
    let inter = inter_params
        .signed_by(&inter_key, &Issuer::new(root_params, root_key))
        .expect("intermediate");
    std::fs::write(dir.join("ca-cert.pem"), inter.pem()).expect("write");
    std::fs::write(
        dir.join("cert-chain.pem"),
        format!("{}{}", inter.pem(), root.pem()),
    )
    .expect("write");
    std::fs::write(dir.join("root-cert.pem"), root.pem()).expect("write");
    write_key(&dir.join("ca-key.pem"), &inter_key.serialize_pem());

    let authority = Authority::load_or_create(&options(&dir)).expect("plugged CA");
    assert_eq!(authority.trust_bundle(), [root.der().clone()]);
    let orders = id(TD, "shop", "orders");
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let chain = authority
        .issue(&key, &orders, Validity::from_now(Duration::from_secs(600)))
        .expect("issued");
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(&chain[1], inter.der());
    assert_eq!(&chain[2], root.der());
    openssl_verify(&root.pem(), &chain_pem(&chain[..2]));
}

fn write_key(path: &std::path::Path, pem: &str) {
    std::fs::write(path, pem).expect("write key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

/// `openssl verify` accepts the leaf (first of `chain_pem`) with the rest as
/// untrusted intermediates.
fn openssl_verify(root_pem: &str, chain_pem: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root.pem");
    let chain = tmp.path().join("chain.pem");
    std::fs::write(&root, root_pem).expect("write");
    std::fs::write(&chain, chain_pem).expect("write");
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root)
        .arg("-untrusted")
        .arg(&chain)
        .arg(&chain)
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(": OK"),
        "openssl verify: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn openssl_verifies_workload_chain() {
    let ca = TestCa::new(TD);
    let issued = ca.issue_valid(&id(TD, "shop", "orders"));
    openssl_verify(&chain_pem(&[ca.root()]), &chain_pem(&issued.chain[..1]));
    // And prints the SPIFFE ID as the URI SAN.
    let tmp = tempfile::tempdir().expect("tempdir");
    let leaf = tmp.path().join("leaf.pem");
    std::fs::write(&leaf, chain_pem(&issued.chain[..1])).expect("write");
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&leaf)
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/shop/sa/orders"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
}

#[tokio::test]
async fn openssl_s_client_talks_to_a_weft_mtls_server() {
    let ca = TestCa::new(TD);
    let server_id = id(TD, "shop", "payments");
    let server = ca.issue_valid(&server_id);
    let client = ca.issue_valid(&id(TD, "shop", "orders"));
    let (addr, mut seen) = echo_server(
        server.source(),
        weft_ca::tls::SpiffeClientVerifier::new(ca.bundle(), TD),
    )
    .await;

    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root.pem");
    let cert = tmp.path().join("client.pem");
    let key = tmp.path().join("client-key.pem");
    std::fs::write(&root, chain_pem(&[ca.root()])).expect("write");
    std::fs::write(&cert, chain_pem(&client.chain[..1])).expect("write");
    write_key(&key, &client.key.serialize_pem());
    let addr_s = addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr_s,
                "-tls1_3",
                "-verify_return_error",
                "-brief",
                "-alpn",
                "h2",
            ])
            .arg("-CAfile")
            .arg(&root)
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .output()
    })
    .await
    .expect("join")
    .expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "s_client failed: {text}");
    assert!(text.contains("Verification: OK"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    // The weft server saw the client's SPIFFE identity.
    assert_eq!(
        seen.recv().await,
        Some(Ok("spiffe://cluster.local/ns/shop/sa/orders".to_owned()))
    );
}
