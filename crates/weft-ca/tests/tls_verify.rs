//! The SPIFFE verifiers over real TLS 1.3 handshakes: identities checked
//! both ways; expired, not-yet-valid, unknown-root and foreign-trust-domain
//! certificates refused; roots rotated without an outage.

mod common;

use common::*;
use weft_ca::TrustBundle;
use weft_ca::authority::Validity;
use weft_ca::tls::SpiffeClientVerifier;

const TD: &str = "cluster.local";

#[tokio::test]
async fn mutual_tls_checks_identities_both_ways() {
    let ca = TestCa::new(TD);
    let server_id = id(TD, "shop", "payments");
    let client_id = id(TD, "shop", "orders");
    let server = ca.issue_valid(&server_id);
    let client = ca.issue_valid(&client_id);
    let (addr, mut seen) =
        echo_server(server.source(), SpiffeClientVerifier::new(ca.bundle(), TD)).await;

    let got = echo_client(
        addr,
        Some(client.source()),
        ca.bundle(),
        vec![server_id.clone()],
    )
    .await;
    assert_eq!(got, Ok(server_id.to_string()));
    assert_eq!(seen.recv().await, Some(Ok(client_id.to_string())));

    // Expecting someone else: the handshake fails naming both identities.
    let other = id(TD, "shop", "reviews");
    let err = echo_client(
        addr,
        Some(client.source()),
        ca.bundle(),
        vec![other.clone()],
    )
    .await
    .expect_err("wrong identity");
    assert!(
        err.contains(&server_id.to_string()) && err.contains(&other.to_string()),
        "{err}"
    );

    // No client certificate: refused by a server that requires one.
    let _ = echo_client(addr, None, ca.bundle(), vec![server_id.clone()]).await;
    let seen_err = loop {
        match seen.recv().await.expect("server reports") {
            Err(e) => break e,
            Ok(_) => continue,
        }
    };
    assert!(
        seen_err.to_lowercase().contains("certificate"),
        "{seen_err}"
    );
}

#[tokio::test]
async fn bad_certificates_are_refused() {
    let ca = TestCa::new(TD);
    let stranger_ca = TestCa::new(TD);
    let foreign_ca = TestCa::new("other.example");
    let server_id = id(TD, "shop", "payments");
    let cases = [
        (
            "expired",
            ca.issue(
                &server_id,
                Validity {
                    not_before: ago(7200),
                    not_after: ago(3600),
                },
            ),
            "expired",
        ),
        (
            "not yet valid",
            ca.issue(
                &server_id,
                Validity {
                    not_before: from_now(3600),
                    not_after: from_now(7200),
                },
            ),
            "not valid yet",
        ),
        (
            "unknown root",
            stranger_ca.issue_valid(&server_id),
            "unknownissuer",
        ),
    ];
    let client = ca.issue_valid(&id(TD, "shop", "orders"));
    for (what, server, needle) in cases {
        let (addr, _seen) =
            echo_server(server.source(), SpiffeClientVerifier::new(ca.bundle(), TD)).await;
        let err = echo_client(
            addr,
            Some(client.source()),
            ca.bundle(),
            vec![server_id.clone()],
        )
        .await
        .expect_err(what);
        assert!(err.to_lowercase().contains(needle), "{what}: {err}");
    }

    // A client from another trust domain is refused by the server, even
    // when its root is trusted.
    let foreign_client = foreign_ca.issue_valid(&id("other.example", "shop", "orders"));
    let server = ca.issue_valid(&server_id);
    let bundle = TrustBundle::new(vec![ca.root(), foreign_ca.root()]).expect("bundle");
    let (addr, mut seen) = echo_server(
        server.source(),
        SpiffeClientVerifier::new(bundle.clone(), TD),
    )
    .await;
    let _ = echo_client(
        addr,
        Some(foreign_client.source()),
        bundle,
        vec![server_id.clone()],
    )
    .await;
    let err = seen
        .recv()
        .await
        .expect("server reports")
        .expect_err("refused");
    assert!(
        err.contains("spiffe://other.example/ns/shop/sa/orders")
            && err.contains("trust domain cluster.local"),
        "{err}"
    );
}

#[tokio::test]
async fn roots_rotate_without_an_outage() {
    let old = TestCa::new(TD);
    let new = TestCa::new(TD);
    let a_id = id(TD, "shop", "a");
    let b_id = id(TD, "shop", "b");
    let a_old = old.issue_valid(&a_id);
    let b_new = new.issue_valid(&b_id);
    let bundle = TrustBundle::new(vec![old.root(), new.root()]).expect("bundle");

    // With [old, new] trusted, an old-root peer and a new-root peer talk both ways.
    let (a_addr, _a_seen) = echo_server(
        a_old.source(),
        SpiffeClientVerifier::new(bundle.clone(), TD),
    )
    .await;
    let (b_addr, _b_seen) = echo_server(
        b_new.source(),
        SpiffeClientVerifier::new(bundle.clone(), TD),
    )
    .await;
    assert_eq!(
        echo_client(
            a_addr,
            Some(b_new.source()),
            bundle.clone(),
            vec![a_id.clone()]
        )
        .await,
        Ok(a_id.to_string())
    );
    assert_eq!(
        echo_client(
            b_addr,
            Some(a_old.source()),
            bundle.clone(),
            vec![b_id.clone()]
        )
        .await,
        Ok(b_id.to_string())
    );

    // Drop the old root: old-root certificates are refused from then on.
    bundle.set(vec![new.root()]).expect("set");
    let err = echo_client(
        a_addr,
        Some(b_new.source()),
        bundle.clone(),
        vec![a_id.clone()],
    )
    .await
    .expect_err("old-root server refused");
    assert!(err.to_lowercase().contains("unknownissuer"), "{err}");
    let b_new2 = new.issue_valid(&a_id);
    let (c_addr, _c_seen) = echo_server(
        b_new2.source(),
        SpiffeClientVerifier::new(bundle.clone(), TD),
    )
    .await;
    assert_eq!(
        echo_client(
            c_addr,
            Some(b_new.source()),
            bundle.clone(),
            vec![a_id.clone()]
        )
        .await,
        Ok(a_id.to_string())
    );
}
