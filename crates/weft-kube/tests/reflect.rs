//! The reflectors follow the fake API server: a cluster-scoped object's
//! change (a Namespace's labels) reaches [`Reflectors::cluster`], across a
//! `410 Gone` too.

use std::time::{Duration, Instant};

use serde_json::json;
use weft_kube::source::Reflectors;
use weft_kube_fake::FakeApiServer;

fn namespace(mode: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": mode}}})
}

async fn until(reflectors: &Reflectors, mode: &str) {
    let started = Instant::now();
    loop {
        let c = reflectors.cluster();
        let now = c.namespaces.first().and_then(|n| {
            n.metadata
                .labels
                .as_ref()?
                .get("istio.io/dataplane-mode")
                .cloned()
        });
        if now.as_deref() == Some(mode) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still {now:?}, want {mode}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_changes_reach_the_stores() {
    let fake = FakeApiServer::start().await.expect("fake");
    fake.apply(namespace("ambient"));
    let client = kube::Client::try_from(kube::Config::new(fake.url().parse().expect("url")))
        .expect("client");
    let reflectors = Reflectors::start(&client);
    assert!(reflectors.ready(Duration::from_secs(5)).await.is_empty());
    until(&reflectors, "ambient").await;
    fake.apply(namespace("none"));
    until(&reflectors, "none").await;
    fake.compact();
    fake.apply(namespace("ambient"));
    until(&reflectors, "ambient").await;
    fake.apply(namespace("none"));
    until(&reflectors, "none").await;
}
