//! Istio's bookinfo networking samples, written here in their upstream
//! shapes (an Istio `Gateway` with the `bookinfo` VirtualService bound to
//! it, `destination-rule-all`, `virtual-service-reviews-test-v2`,
//! `virtual-service-ratings-test-delay`, `…-test-abort`,
//! `virtual-service-reviews-50-v3`), run by `weft up` with a registry for
//! them: requests through the ingress gateway reach productpage;
//! requests to reviews and ratings go through their waypoint, where
//! `end-user: jason` goes to reviews v2, meets a 7 s delay or a 500 abort
//! at ratings, and everyone else is split 50/50 between reviews v1 and
//! v3. Each sample is swapped in while the mesh runs, as a user would.
//! Last, a sidecar-era `AuthorizationPolicy` (a selector and a method):
//! `weft validate` says how the node reads it, and the node enforces it
//! the fail-safe way Istio ambient does.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::Up;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const GATEWAY: &str = "127.0.1.64:8080";
/// The client's outbound ports to reviews and ratings (through the mesh).
const REVIEWS: &str = "127.0.2.65:9001";
const RATINGS: &str = "127.0.2.65:9002";
const DETAILS: &str = "127.0.2.65:9003";

/// The registry: services, their workloads (run by `weft up`), the
/// waypoint, the ingress gateway, a client.
const REGISTRY: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: productpage, namespace: bookinfo}
spec:
  hosts: [productpage.bookinfo.svc.cluster.local]
  addresses: [240.240.7.1]
  location: MESH_INTERNAL
  ports: [{name: http, number: 9080, protocol: HTTP}]
  workloadSelector: {labels: {app: productpage}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details, namespace: bookinfo}
spec:
  hosts: [details.bookinfo.svc.cluster.local]
  addresses: [240.240.7.2]
  location: MESH_INTERNAL
  ports: [{name: http, number: 9080, protocol: HTTP}]
  workloadSelector: {labels: {app: details}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: bookinfo
  labels: {istio.io/use-waypoint: waypoint}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  addresses: [240.240.7.3]
  location: MESH_INTERNAL
  ports: [{name: http, number: 9080, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ratings
  namespace: bookinfo
  labels: {istio.io/use-waypoint: waypoint}
spec:
  hosts: [ratings.bookinfo.svc.cluster.local]
  addresses: [240.240.7.4]
  location: MESH_INTERNAL
  ports: [{name: http, number: 9080, protocol: HTTP}]
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: productpage-v1
  namespace: bookinfo
  annotations: {weft.dev/run: "weft sample-app --listen 127.0.1.60:9080 --name productpage"}
spec: {address: 127.0.1.60, serviceAccount: bookinfo-productpage, labels: {app: productpage, version: v1, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: details-v1
  namespace: bookinfo
  annotations: {weft.dev/run: "weft sample-app --listen 127.0.1.66:9080 --name details"}
spec: {address: 127.0.1.66, serviceAccount: bookinfo-details, labels: {app: details, version: v1, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-v1
  namespace: bookinfo
  annotations: {weft.dev/run: "weft sample-app --listen 127.0.1.61:9080 --name reviews --version v1"}
spec: {address: 127.0.1.61, serviceAccount: bookinfo-reviews, labels: {app: reviews, version: v1, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-v2
  namespace: bookinfo
  annotations: {weft.dev/run: "weft sample-app --listen 127.0.2.61:9080 --name reviews --version v2"}
spec: {address: 127.0.2.61, serviceAccount: bookinfo-reviews, labels: {app: reviews, version: v2, weft.dev/node: node-2}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-v3
  namespace: bookinfo
  annotations: {weft.dev/run: "weft sample-app --listen 127.0.2.62:9080 --name reviews --version v3"}
spec: {address: 127.0.2.62, serviceAccount: bookinfo-reviews, labels: {app: reviews, version: v3, weft.dev/node: node-2}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: ratings-v1
  namespace: bookinfo
  annotations: {weft.dev/run: "weft sample-app --listen 127.0.1.62:9080 --name ratings --version v1"}
spec: {address: 127.0.1.62, serviceAccount: bookinfo-ratings, labels: {app: ratings, version: v1, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: waypoint, namespace: bookinfo}
spec: {address: 127.0.1.63, serviceAccount: waypoint, labels: {weft.dev/waypoint: "true", weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  address: 127.0.1.64
  serviceAccount: istio-ingressgateway
  labels: {istio: ingressgateway, weft.dev/gateway: "true", weft.dev/node: node-1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: client
  namespace: bookinfo
  annotations:
    weft.dev/client-only: "true"
    weft.dev/outbound: "9001=reviews.bookinfo.svc.cluster.local:9080, 9002=ratings.bookinfo.svc.cluster.local:9080, 9003=details.bookinfo.svc.cluster.local:9080"
spec: {address: 127.0.2.65, serviceAccount: client, labels: {app: client, weft.dev/node: node-2}}
"#;

/// samples/bookinfo/networking/bookinfo-gateway.yaml
const BOOKINFO_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
  namespace: bookinfo
spec:
  # The selector matches the ingress gateway pod labels.
  # If you installed Istio using Helm following the standard documentation, this would be "istio=ingress"
  selector:
    istio: ingressgateway # use istio default controller
  servers:
  - port:
      number: 8080
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
  namespace: bookinfo
spec:
  hosts:
  - "*"
  gateways:
  - bookinfo-gateway
  http:
  - match:
    - uri:
        exact: /productpage
    - uri:
        prefix: /static
    - uri:
        exact: /login
    - uri:
        exact: /logout
    - uri:
        prefix: /api/v1/products
    route:
    - destination:
        host: productpage
        port:
          number: 9080
"#;

/// samples/bookinfo/networking/destination-rule-all.yaml
const DESTINATION_RULE_ALL: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: productpage
  namespace: bookinfo
spec:
  host: productpage
  subsets:
  - name: v1
    labels:
      version: v1
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: bookinfo
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ratings
  namespace: bookinfo
spec:
  host: ratings
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v2-mysql
    labels:
      version: v2-mysql
  - name: v2-mysql-vm
    labels:
      version: v2-mysql-vm
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: details
  namespace: bookinfo
spec:
  host: details
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"#;

/// samples/bookinfo/networking/virtual-service-reviews-test-v2.yaml
const REVIEWS_TEST_V2: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts:
    - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
"#;

/// samples/bookinfo/networking/virtual-service-reviews-50-v3.yaml
const REVIEWS_50_V3: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 50
    - destination:
        host: reviews
        subset: v3
      weight: 50
"#;

/// samples/bookinfo/networking/virtual-service-ratings-test-delay.yaml
const RATINGS_TEST_DELAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
  namespace: bookinfo
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      delay:
        percentage:
          value: 100.0
        fixedDelay: 7s
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"#;

/// samples/bookinfo/networking/virtual-service-ratings-test-abort.yaml
const RATINGS_TEST_ABORT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
  namespace: bookinfo
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      abort:
        percentage:
          value: 100.0
        httpStatus: 500
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"#;

/// A sidecar-era policy from Istio's HTTP authorization task: a
/// `selector` and a method. A node cannot see methods, so, as in Istio
/// ambient, its ALLOW rule never matches: details is closed to all.
const DETAILS_VIEWER: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: "details-viewer"
  namespace: bookinfo
spec:
  selector:
    matchLabels:
      app: details
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/bookinfo/sa/bookinfo-productpage"]
    to:
    - operation:
        methods: ["GET"]
"#;

/// A response: status and the sample app's name and version headers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    app: String,
    version: String,
}

/// One HTTP/1.1 request; `None` when the connection fails.
fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Option<Answer> {
    let mut conn = TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let mut request =
        format!("GET {path} HTTP/1.1\r\nhost: bookinfo.example\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let header = |name: &str| {
        text.lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    Some(Answer {
        status,
        app: header("x-weft-app"),
        version: header("x-weft-version"),
    })
}

/// Asks until `done` holds for an answer (the mesh applies each change
/// within moments); panics after 30 s naming `what`.
fn until(
    what: &str,
    mut ask: impl FnMut() -> Option<Answer>,
    done: impl Fn(&Answer) -> bool,
) -> Answer {
    let started = Instant::now();
    loop {
        let answer = ask();
        if let Some(a) = answer.as_ref().filter(|a| done(a)) {
            return a.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: last answer {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const JASON: &[(&str, &str)] = &[("end-user", "jason")];

#[test]
fn bookinfo_samples_behave_as_documented_through_gateway_and_waypoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("config");
    std::fs::create_dir(&config).expect("mkdir");
    let write = |file: &str, text: &str| {
        // Written aside and renamed, so a reload never sees half a file.
        let part = tmp.path().join(file);
        std::fs::write(&part, text).expect("write");
        std::fs::rename(&part, config.join(file)).expect("rename");
    };
    write("registry.yaml", REGISTRY);
    write("bookinfo-gateway.yaml", BOOKINFO_GATEWAY);
    write("destination-rule-all.yaml", DESTINATION_RULE_ALL);
    write("reviews.yaml", REVIEWS_TEST_V2);
    write("ratings.yaml", RATINGS_TEST_DELAY);

    // weft validate reads the samples (warnings only: ratings v2… and
    // details v2 have no endpoints here).
    let validated = Command::new(WEFT)
        .arg("validate")
        .arg(&config)
        .output()
        .expect("weft validate");
    let said = String::from_utf8_lossy(&validated.stdout);
    assert!(validated.status.success(), "{said}");
    assert!(
        said.contains("subset \"v2-mysql\" selects none of bookinfo/ratings's endpoints"),
        "{said}"
    );

    let _up = Up::start(&config, &[]);

    // The ingress gateway: the bookinfo VirtualService's paths go to
    // productpage (the sample app answers them, with its name; it has no
    // page there, hence its 404); other paths have no route at all.
    until(
        "productpage through the gateway",
        || get(GATEWAY, "/productpage", &[]),
        |a| a.app == "productpage",
    );
    let api = get(GATEWAY, "/api/v1/products", &[]).expect("answer");
    assert_eq!(api.app, "productpage");
    let none = get(GATEWAY, "/reviews", &[]).expect("answer");
    assert_eq!(
        (none.status, none.app.as_str()),
        (404, ""),
        "no route for /reviews at the gateway"
    );

    // reviews-test-v2: jason sees v2, everyone else v1.
    until(
        "reviews reachable",
        || get(REVIEWS, "/", &[]),
        |a| a.status == 200,
    );
    for _ in 0..10 {
        assert_eq!(get(REVIEWS, "/", JASON).expect("answer").version, "v2");
        assert_eq!(get(REVIEWS, "/", &[]).expect("answer").version, "v1");
    }

    // ratings-test-delay: jason waits 7 s; others do not.
    let started = Instant::now();
    let slow = get(RATINGS, "/", JASON).expect("answer");
    let waited = started.elapsed();
    assert_eq!(slow.status, 200);
    assert!(
        waited >= Duration::from_secs(7),
        "jason waited only {waited:?}"
    );
    let started = Instant::now();
    assert_eq!(get(RATINGS, "/", &[]).expect("answer").status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "others are not delayed"
    );

    // ratings-test-abort, swapped in: jason gets 500 at once.
    write("ratings.yaml", RATINGS_TEST_ABORT);
    until(
        "the abort for jason",
        || get(RATINGS, "/", JASON),
        |a| a.status == 500,
    );
    assert_eq!(get(RATINGS, "/", &[]).expect("answer").status, 200);

    // reviews-50-v3, swapped in: v1 and v3 share the traffic, v2 none.
    write("reviews.yaml", REVIEWS_50_V3);
    until(
        "v3 appears",
        || get(REVIEWS, "/", &[]),
        |a| a.version == "v3",
    );
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..60 {
        let a = get(REVIEWS, "/", JASON).expect("answer");
        *seen.entry(a.version).or_insert(0) += 1;
    }
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["v1", "v3"], "{seen:?}");
    assert!(seen.values().all(|n| *n >= 10), "about half each: {seen:?}");

    // The sidecar-era policy: validate says how the node reads it, and
    // the node enforces it the fail-safe way — details refuses everyone.
    assert_eq!(
        get(DETAILS, "/", &[]).map(|a| a.app),
        Some("details".into())
    );
    write("details-viewer.yaml", DETAILS_VIEWER);
    let validated = Command::new(WEFT)
        .arg("validate")
        .arg(&config)
        .output()
        .expect("weft validate");
    let said = String::from_utf8_lossy(&validated.stdout);
    assert!(validated.status.success(), "{said}");
    assert!(
        said.contains("AuthorizationPolicy bookinfo/details-viewer: warning: spec.rules[0].to[0].operation.methods: methods is request-level"),
        "{said}"
    );
    let started = Instant::now();
    while get(DETAILS, "/", &[]).is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "details still answers under details-viewer"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
