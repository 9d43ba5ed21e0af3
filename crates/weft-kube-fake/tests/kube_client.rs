//! The fake API server speaks enough of the protocol for the real client:
//! kube-rs lists, watches (resuming after a cut watch, re-listing after
//! `410 Gone`) and reflects every change exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config};
use serde_json::json;
use weft_kube_fake::FakeApiServer;

fn pod(name: &str, ip: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "labels": {"app": "x"}},
           "spec": {"containers": [{"name": "app", "image": "app"}], "nodeName": "node-1"},
           "status": {"podIP": ip, "phase": "Running"}})
}

async fn client(fake: &FakeApiServer) -> Client {
    let config = Config::new(fake.url().parse().expect("url"));
    Client::try_from(config).expect("client")
}

/// Applies watcher events to a name → pod IP map until `done` holds.
async fn follow(
    stream: &mut (impl futures::Stream<Item = watcher::Result<Event<Pod>>> + Unpin),
    seen: &mut BTreeMap<String, String>,
    restarts: &mut usize,
    done: impl Fn(&BTreeMap<String, String>) -> bool,
) {
    let mut fresh: Option<BTreeMap<String, String>> = None;
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done(seen) || fresh.is_some() {
            let event = stream.next().await.expect("stream").expect("event");
            let entry = |p: &Pod| {
                (
                    p.metadata.name.clone().unwrap_or_default(),
                    p.status
                        .as_ref()
                        .and_then(|s| s.pod_ip.clone())
                        .unwrap_or_default(),
                )
            };
            match event {
                Event::Init => {
                    *restarts += 1;
                    fresh = Some(BTreeMap::new());
                }
                Event::InitApply(p) => {
                    let (k, v) = entry(&p);
                    fresh.get_or_insert_default().insert(k, v);
                }
                Event::InitDone => *seen = fresh.take().unwrap_or_default(),
                Event::Apply(p) => {
                    let (k, v) = entry(&p);
                    seen.insert(k, v);
                }
                Event::Delete(p) => {
                    seen.remove(&entry(&p).0);
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the watcher never saw the change; it holds {seen:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_lists_watches_resumes_and_relists() {
    let fake = FakeApiServer::start().await.expect("fake");
    fake.apply(pod("a", "10.0.0.1"));
    let api: Api<Pod> = Api::all(client(&fake).await);
    let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    let (mut seen, mut restarts) = (BTreeMap::new(), 0);

    // The initial list.
    follow(&mut stream, &mut seen, &mut restarts, |s| s.len() == 1).await;
    assert_eq!(seen["a"], "10.0.0.1");
    assert_eq!(restarts, 1);

    // Live changes.
    fake.apply(pod("b", "10.0.0.2"));
    fake.apply(pod("a", "10.0.0.9"));
    follow(&mut stream, &mut seen, &mut restarts, |s| {
        s.get("b").is_some() && s["a"] == "10.0.0.9"
    })
    .await;

    // A cut watch: changes made meanwhile arrive once, no re-list.
    fake.drop_watches();
    fake.apply(pod("c", "10.0.0.3"));
    assert!(fake.delete("v1", "Pod", "shop", "b"));
    follow(&mut stream, &mut seen, &mut restarts, |s| {
        s.contains_key("c") && !s.contains_key("b")
    })
    .await;
    assert_eq!(restarts, 1, "a cut watch resumes from its resourceVersion");

    // 410 Gone: the client lists again and ends with the same truth.
    fake.compact();
    fake.apply(pod("d", "10.0.0.4"));
    follow(&mut stream, &mut seen, &mut restarts, |s| {
        s.contains_key("d")
    })
    .await;
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "c", "d"]
    );

    // A plain get and a create through the client.
    let got = api.clone();
    let shop: Api<Pod> = Api::namespaced(got.into_client(), "shop");
    let a = shop.get("a").await.expect("get");
    assert_eq!(a.metadata.namespace.as_deref(), Some("shop"));
    let created = shop
        .create(
            &Default::default(),
            &serde_json::from_value(pod("e", "10.0.0.5")).expect("pod"),
        )
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    let again = shop
        .create(
            &Default::default(),
            &serde_json::from_value(pod("e", "10.0.0.5")).expect("pod"),
        )
        .await;
    assert!(
        matches!(again, Err(kube::Error::Api(ref s)) if s.code == 409),
        "{again:?}"
    );
}
