//! # weft-kube-fake
//!
//! A **fake** Kubernetes API server, for tests and benchmarks only: no
//! Kubernetes API server can be installed on the machines weft is built
//! on (none is packaged for Debian, PyPI or npm), so weft's Kubernetes
//! code — the real client, kube-rs — is exercised against this. It is a
//! real HTTP/1.1 server speaking the parts of the API the control plane
//! uses, with the behaviours a client must survive:
//!
//! - **list** (`GET /api/v1/pods`, `/apis/<group>/<version>/namespaces/<ns>/<plural>`, …)
//!   answering `<Kind>List` with the collection's `resourceVersion`;
//! - **watch** (`?watch=true&resourceVersion=N`): the events after `N`
//!   from its history, then live ones, as newline-delimited JSON;
//!   `BOOKMARK` events when asked (`allowWatchBookmarks`); a
//!   `resourceVersion` older than the history ([`FakeApiServer::compact`])
//!   answered with an `ERROR` event carrying `410 Gone`, as the real one
//!   does; every open watch can be cut ([`FakeApiServer::drop_watches`]);
//! - **get**, **create** (`POST`), **replace** (`PUT`), **merge-patch**
//!   (`PATCH`, also of `/status`) and **delete** of single objects, with
//!   `uid`, `resourceVersion` and `409 AlreadyExists` / `404 NotFound`
//!   statuses; a replace naming a stale `resourceVersion` gets `409
//!   Conflict` (optimistic concurrency, as leader election relies on).
//!
//! - **TokenReview**: tokens registered with [`FakeApiServer::add_token`]
//!   are vouched for (username, and the node of the pod they are bound
//!   to); any other is not.
//!
//! Objects are untyped JSON: any kind works, CRDs included. There is no
//! authentication, admission, validation or field selection — it is not a
//! Kubernetes API server and must never be used as one.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};

mod paths;
mod reviews;

pub use paths::{Collection, plural};
use paths::{Target, place, query, target};

/// One change, as a watch reports it.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    collection: Collection,
    namespace: Option<String>,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    /// The last resourceVersion handed out.
    rv: u64,
    /// Objects by (collection, namespace, name).
    objects: BTreeMap<(Collection, String, String), Value>,
    /// Kinds seen per collection (for list kinds).
    kinds: BTreeMap<Collection, String>,
    /// Changes, oldest first.
    history: Vec<Change>,
    /// Watches from a resourceVersion before this get 410 Gone.
    oldest: u64,
    /// Tokens a `TokenReview` vouches for: token → (username, node).
    tokens: BTreeMap<String, (String, Option<String>)>,
    /// How many `TokenReview`s were asked for.
    reviews: u64,
    next_uid: u64,
}

/// A running fake API server (see the crate documentation).
pub struct FakeApiServer {
    /// Where it listens (`http://<addr>`).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How often open watches get a `BOOKMARK` when they asked for them.
pub const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

impl FakeApiServer {
    /// Starts one on `127.0.0.1` (an ephemeral port).
    pub async fn start() -> std::io::Result<FakeApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (changes, _) = broadcast::channel(65_536);
        let (cut, _) = watch::channel(0u64);
        let shared = Shared {
            state: state.clone(),
            changes: changes.clone(),
            cut: cut.clone(),
        };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(FakeApiServer {
            addr,
            state,
            changes,
            cut,
            task,
        })
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (YAML) pointing at it, for clients that read one.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{}\"}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{token: fake-token}}\n",
            self.url()
        )
    }

    /// Creates or replaces `object` (it names its `apiVersion`, `kind`,
    /// `metadata`), as a controller's write would: a new
    /// `resourceVersion`, `ADDED` or `MODIFIED` to watches. Returns it as
    /// stored.
    pub fn apply(&self, object: Value) -> Value {
        let shared = self.shared();
        shared
            .upsert(object, None)
            .unwrap_or_else(|(_, e)| json!({"error": e}))
    }

    /// Deletes an object; `DELETED` to watches. Whether it existed.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let object = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace}});
        let Ok((collection, ns, name, _)) = place(&object) else {
            return false;
        };
        self.shared().remove(&collection, &ns, &name).is_some()
    }

    /// The object stored under (`apiVersion`, `kind`, namespace, name).
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let object = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace}});
        let (collection, ns, name, _) = place(&object).ok()?;
        let state = lock(&self.state);
        state.objects.get(&(collection, ns, name)).cloned()
    }

    /// Every stored object of a kind (all namespaces).
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let collection = Collection {
            group: group.into(),
            version: version.into(),
            plural: plural(kind),
        };
        let state = lock(&self.state);
        state
            .objects
            .iter()
            .filter(|((c, _, _), _)| *c == collection)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Makes `TokenReview`s vouch for `token` as `username` (e.g.
    /// `system:serviceaccount:shop:reviews`), bound to a pod on `node`.
    pub fn add_token(&self, token: &str, username: &str, node: Option<&str>) {
        lock(&self.state)
            .tokens
            .insert(token.into(), (username.into(), node.map(str::to_owned)));
    }

    /// How many `TokenReview`s it has answered.
    pub fn token_reviews(&self) -> u64 {
        lock(&self.state).reviews
    }

    /// Cuts every open watch connection (clients must re-watch from
    /// their last resourceVersion and miss nothing).
    pub fn drop_watches(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Forgets the history: a watch from any resourceVersion before now
    /// gets `410 Gone` (clients must list again), and open watches are
    /// cut.
    pub fn compact(&self) {
        {
            let mut state = lock(&self.state);
            state.oldest = state.rv + 1;
            state.history.clear();
        }
        self.drop_watches();
    }

    /// How many changes it has handed out (its current resourceVersion).
    pub fn resource_version(&self) -> u64 {
        lock(&self.state).rv
    }

    fn shared(&self) -> Shared {
        Shared {
            state: self.state.clone(),
            changes: self.changes.clone(),
            cut: self.cut.clone(),
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A Kubernetes `Status` body.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    cut: watch::Sender<u64>,
}

impl Shared {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let Some(target) = target(&path) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("the fake API server does not serve {path}"),
            );
        };
        let query = query(&req);
        let method = req.method().clone();
        match (method, &target.name) {
            (Method::GET, None)
                if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
            {
                self.watch(&target, &query)
            }
            (Method::GET, None) => self.list_response(&target),
            (Method::GET, Some(name)) => {
                let key = (
                    target.collection.clone(),
                    target.namespace.clone().unwrap_or_default(),
                    name.clone(),
                );
                match lock(&self.state).objects.get(&key) {
                    Some(v) => full(StatusCode::OK, v),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("{} {name:?} not found", target.collection.plural),
                    ),
                }
            }
            (Method::POST, None) if target.collection.plural == "tokenreviews" => {
                let Ok(bytes) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "unreadable body");
                };
                let review: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let token = review["spec"]["token"].as_str().unwrap_or("");
                let known = {
                    let mut state = lock(&self.state);
                    state.reviews += 1;
                    state.tokens.get(token).cloned()
                };
                let answer = reviews::answer(review, known);
                full(StatusCode::CREATED, &answer)
            }
            (Method::POST, None) | (Method::PUT, Some(_)) => {
                let create = target.name.is_none();
                let Ok(bytes) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "unreadable body");
                };
                let Ok(mut object) = serde_json::from_slice::<Value>(&bytes) else {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "the body is not JSON",
                    );
                };
                if let (Some(ns), Some(meta)) =
                    (&target.namespace, object["metadata"].as_object_mut())
                    && !meta.contains_key("namespace")
                {
                    meta.insert("namespace".into(), Value::String(ns.clone()));
                }
                let mode = if create { Some(true) } else { Some(false) };
                match self.upsert(object, mode) {
                    Ok(stored) => full(
                        if create {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        },
                        &stored,
                    ),
                    Err((code, e)) => status(
                        code,
                        if code == StatusCode::CONFLICT {
                            "AlreadyExists"
                        } else {
                            "NotFound"
                        },
                        &e,
                    ),
                }
            }
            (Method::PATCH, Some(name)) => {
                let Ok(bytes) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "unreadable body");
                };
                let Ok(patch) = serde_json::from_slice::<Value>(&bytes) else {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "the body is not JSON",
                    );
                };
                let key = (
                    target.collection.clone(),
                    target.namespace.clone().unwrap_or_default(),
                    name.clone(),
                );
                let Some(mut object) = lock(&self.state).objects.get(&key).cloned() else {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("{name:?} not found"),
                    );
                };
                // A JSON merge patch (RFC 7386); on `/status`, of the
                // status only.
                if target.status {
                    merge(&mut object["status"], &patch["status"]);
                } else {
                    merge(&mut object, &patch);
                }
                match self.upsert(object, Some(false)) {
                    Ok(stored) => full(StatusCode::OK, &stored),
                    Err((code, e)) => status(code, "NotFound", &e),
                }
            }
            (Method::DELETE, Some(name)) => {
                match self.remove(
                    &target.collection,
                    target.namespace.as_deref().unwrap_or(""),
                    name,
                ) {
                    Some(v) => full(StatusCode::OK, &v),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("{name:?} not found"),
                    ),
                }
            }
            (m, _) => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("{m} is not served by the fake"),
            ),
        }
    }

    /// Stores an object: `create` Some(true) must be new, Some(false)
    /// must exist, None either.
    fn upsert(
        &self,
        mut object: Value,
        create: Option<bool>,
    ) -> Result<Value, (StatusCode, String)> {
        let (collection, namespace, name, kind) =
            place(&object).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        let mut state = lock(&self.state);
        let key = (collection.clone(), namespace.clone(), name.clone());
        let existing = state.objects.get(&key).cloned();
        match (create, &existing) {
            (Some(true), Some(_)) => {
                return Err((
                    StatusCode::CONFLICT,
                    format!("{kind} {name:?} already exists"),
                ));
            }
            (Some(false), None) => {
                return Err((StatusCode::NOT_FOUND, format!("{kind} {name:?} not found")));
            }
            // A replace naming a resourceVersion succeeds only against that
            // version (optimistic concurrency, what leader election needs).
            (Some(false), Some(stored)) => {
                let asked = object["metadata"]["resourceVersion"].as_str();
                let now = stored["metadata"]["resourceVersion"].as_str();
                if asked.is_some_and(|a| Some(a) != now) {
                    return Err((
                        StatusCode::CONFLICT,
                        format!(
                            "Operation cannot be fulfilled on {kind} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
                        ),
                    ));
                }
            }
            _ => {}
        }
        state.rv += 1;
        let rv = state.rv;
        let uid = match existing
            .as_ref()
            .and_then(|e| e["metadata"]["uid"].as_str())
        {
            Some(uid) => uid.to_owned(),
            None => {
                state.next_uid += 1;
                format!("00000000-0000-4000-8000-{:012}", state.next_uid)
            }
        };
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
            meta.insert("uid".into(), Value::String(uid));
        }
        state.kinds.insert(collection.clone(), kind);
        state.objects.insert(key, object.clone());
        let change = Change {
            rv,
            collection,
            namespace: Some(namespace).filter(|n| !n.is_empty()),
            kind: if existing.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            object: object.clone(),
        };
        state.history.push(change.clone());
        drop(state);
        let _ = self.changes.send(change);
        Ok(object)
    }

    fn remove(&self, collection: &Collection, namespace: &str, name: &str) -> Option<Value> {
        let mut state = lock(&self.state);
        let mut object =
            state
                .objects
                .remove(&(collection.clone(), namespace.to_owned(), name.to_owned()))?;
        state.rv += 1;
        let rv = state.rv;
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let change = Change {
            rv,
            collection: collection.clone(),
            namespace: Some(namespace.to_owned()).filter(|n| !n.is_empty()),
            kind: "DELETED",
            object: object.clone(),
        };
        state.history.push(change.clone());
        drop(state);
        let _ = self.changes.send(change);
        Some(object)
    }

    fn list_response(&self, target: &Target) -> Response<Body> {
        let state = lock(&self.state);
        let items: Vec<&Value> = state
            .objects
            .iter()
            .filter(|((c, ns, _), _)| {
                *c == target.collection && target.namespace.as_ref().is_none_or(|want| want == ns)
            })
            .map(|(_, v)| v)
            .collect();
        let kind = state
            .kinds
            .get(&target.collection)
            .cloned()
            .unwrap_or_else(|| target.collection.plural.clone());
        let api_version = if target.collection.group.is_empty() {
            target.collection.version.clone()
        } else {
            format!("{}/{}", target.collection.group, target.collection.version)
        };
        full(
            StatusCode::OK,
            &json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                    "metadata": {"resourceVersion": state.rv.to_string()}, "items": items}),
        )
    }

    fn watch(&self, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(290), Duration::from_secs);
        // Subscribe before reading the history, so nothing falls between.
        let mut live = self.changes.subscribe();
        let mut cut = self.cut.subscribe();
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
        let (replay, gone, rv_now, kind) = {
            let state = lock(&self.state);
            let kind = state
                .kinds
                .get(&target.collection)
                .cloned()
                .unwrap_or_default();
            if from != 0 && from + 1 < state.oldest {
                (Vec::new(), true, state.rv, kind)
            } else {
                let replay: Vec<Change> = state
                    .history
                    .iter()
                    .filter(|c| c.rv > from && matches(target, c))
                    .cloned()
                    .collect();
                (replay, false, state.rv, kind)
            }
        };
        let target = Target {
            collection: target.collection.clone(),
            namespace: target.namespace.clone(),
            name: None,
            status: false,
        };
        tokio::spawn(async move {
            let send = |v: Value| {
                let tx = tx.clone();
                async move {
                    tx.send(Ok(Frame::data(Bytes::from(format!("{v}\n")))))
                        .await
                        .is_ok()
                }
            };
            if gone {
                let _ = send(
                    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                    "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
                    "message": format!("too old resource version: {from} ({rv_now})")}}),
                )
                .await;
                return;
            }
            let mut last = from;
            for c in replay {
                last = c.rv;
                if !send(json!({"type": c.kind, "object": c.object})).await {
                    return;
                }
            }
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut tick = tokio::time::interval(BOOKMARK_EVERY);
            tick.tick().await;
            cut.borrow_and_update();
            loop {
                tokio::select! {
                    () = &mut deadline => return,
                    _ = cut.changed() => return,
                    _ = tick.tick(), if bookmarks => {
                        let api_version = if target.collection.group.is_empty() {
                            target.collection.version.clone()
                        } else {
                            format!("{}/{}", target.collection.group, target.collection.version)
                        };
                        let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                            "metadata": {"resourceVersion": last.max(rv_now).to_string()}}});
                        if !send(bookmark).await {
                            return;
                        }
                    }
                    change = live.recv() => match change {
                        Ok(c) if c.rv > last && matches(&target, &c) => {
                            last = c.rv;
                            if !send(json!({"type": c.kind, "object": c.object})).await {
                                return;
                            }
                        }
                        Ok(_) => {}
                        // Fell behind or closed: end; the client re-watches.
                        Err(_) => return,
                    },
                }
            }
        });
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
        let mut response = Response::new(body);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            if let Value::Object(t) = target {
                for (k, v) in fields {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn matches(target: &Target, change: &Change) -> bool {
    change.collection == target.collection
        && target
            .namespace
            .as_ref()
            .is_none_or(|ns| change.namespace.as_ref() == Some(ns))
}
