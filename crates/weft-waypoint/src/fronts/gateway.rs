//! The ingress gateway: the L7 engine on public listeners. It runs as a
//! workload labelled `weft.dev/gateway: "true"` (its address, identity and
//! certificate from the mesh) and serves the Gateway API `Gateway` of the
//! same name: one listener per `spec.listeners[]` on its address, plain
//! HTTP or HTTPS (TLS terminated with the listener's certificates, chosen
//! by SNI; optionally checking client certificates), then every request
//! goes through the same phases as in a waypoint — routes from the
//! `HTTPRoute`s attached to the listener, JWT authentication, CUSTOM
//! (external or API-key) authorization, DENY/ALLOW policies, rate limits —
//! and is forwarded into the mesh over HBONE with the gateway's identity.
//!
//! Hostile input is bounded ([`crate::fronts::admission`]): at most
//! [`MAX_CONNECTIONS`] open per listener and a share per source address by
//! default, the newest idle connection shed when full; the TLS handshake
//! and first request head within the header timeout, idle connections
//! closed after the idle timeout; request heads within
//! [`MAX_HEADER_BYTES`] (larger ones are refused by the HTTP layer with
//! 431 or a closed connection), [`MAX_STREAMS`] HTTP/2 streams per
//! connection; an SNI that matches no certificate fails the handshake.
//! Each refusal is logged and counted in
//! `weft_gateway_connections_refused`, each closure in
//! `weft_gateway_connections_closed`.
//! Listeners follow the configuration: new TLS settings are swapped in
//! place, a new port is rebound, removed listeners closed; settings that
//! do not load leave the last good ones in force.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::task::JoinHandle;
use weft_core::l7::{GatewayConfig, GatewayListener, ListenerTls};

use crate::engine::{ClientPrincipal, Engine, PeerAddr, Tls};
use crate::fronts::admission::{Admission, ConnLimits, Ticket, Tracked};
use crate::fronts::downstream::{self, Ended, Protocols, Reply, Transport};
use crate::fronts::east_west::EastWest;
use crate::fronts::hbone::HboneConnector;
use crate::fronts::setup::{WaypointError, WaypointOptions};
use crate::telemetry::metrics::Metrics;

pub use crate::fronts::admission::HANDSHAKE_TIMEOUT;
/// Largest request head (request line and headers) accepted.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Open connections per listener by default; the newest idle one is shed
/// for a new one beyond it ([`crate::fronts::admission`]).
pub const MAX_CONNECTIONS: usize = 16 * 1024;
/// Concurrent HTTP/2 streams per connection (Envoy's default is 100).
pub const MAX_STREAMS: u32 = 100;

/// A running gateway.
pub struct Gateway {
    /// Where its metrics are.
    pub metrics_addr: SocketAddr,
    /// Its request metrics.
    pub metrics: Metrics,
    listeners: Arc<Mutex<Listeners>>,
    tasks: Vec<JoinHandle<()>>,
    _xds: Arc<weft_xds::XdsClient>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listening", &self.listening())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// The listeners bound now: (name, address).
    pub fn listening(&self) -> Vec<(String, SocketAddr)> {
        let held = self
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<_> = held
            .bound
            .iter()
            .map(|(name, l)| (name.clone(), l.addr))
            .collect();
        out.sort();
        out
    }

    /// Stops listening and following the config stream.
    pub fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .close_all();
    }
}

/// Starts the gateway for workload `options.name` (`namespace/name`; the
/// Gateway of the same name configures it).
pub async fn start(options: WaypointOptions) -> Result<Gateway, WaypointError> {
    let mut core = crate::fronts::setup::core(
        &options,
        &[weft_xds::GATEWAY_TYPE],
        "weft.dev/gateway: \"true\"",
        true,
    )
    .await?;
    let (metrics_addr, served) = core.serve_metrics(options.metrics_addr).await?;
    let east_west = Arc::new(EastWest {
        view: Arc::new(ArcSwap::from_pointee(weft_state::MeshView::default())),
        network: core.me.network.clone(),
        connect_timeout: options.connect_timeout,
        turn: std::sync::atomic::AtomicUsize::new(0),
    });
    let hbone_server = weft_ca::tls::server_config(
        core.certs.source(&core.me.identity),
        weft_ca::tls::SpiffeClientVerifier::new(core.bundle.clone(), &options.trust_domain),
    )
    .map_err(|source| WaypointError::Tls {
        proxy: "gateway",
        source,
    })?;
    let listeners = Arc::new(Mutex::new(Listeners {
        bound: HashMap::new(),
        limits: options.connections,
        metrics: core.metrics.clone(),
        connector: core.connector.clone(),
        east_west: (Arc::new(hbone_server), east_west.clone()),
    }));
    let (task_listeners, name, node) = (
        listeners.clone(),
        options.name.clone(),
        options.node.clone(),
    );
    let (metrics, xds) = (core.metrics.clone(), core.xds.clone());
    let jwks = crate::policy::jwks::Fetcher::new(&options.jwks_roots);
    let (ready_tx, mut ready) = tokio::sync::watch::channel(false);
    let reconcile = tokio::spawn(async move {
        let mut redis = HashMap::new();
        loop {
            let (view, mut services) = core.refresh(&node, &mut redis, &jwks).await;
            east_west.view.store(view.clone());
            let gateway = gateway_config(&core.changes.borrow(), &name);
            let gateway = gateway.unwrap_or_else(|why| {
                tracing::warn!(gateway = %name, "{why}; serving no listeners");
                GatewayConfig::default()
            });
            services.plugins = core.plugins.load(&gateway.policy.wasm).await;
            let previous = core.engine.current();
            core.engine.update(crate::configure::gateway_config_for(
                &view,
                &core.me,
                &gateway,
                &services,
                Some(&previous),
            ));
            task_listeners
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .apply(&gateway.listeners, core.me.ip, &core.engine, &name);
            ready_tx.send_replace(!gateway.listeners.is_empty());
            if core.changes.changed().await.is_err() {
                return;
            }
        }
    });
    // Ready once the first configuration with listeners is applied.
    let _ = tokio::time::timeout(
        crate::fronts::setup::REGISTRY_WAIT,
        ready.wait_for(|ready| *ready),
    )
    .await;
    tracing::info!(gateway = %options.name, "gateway ready");
    Ok(Gateway {
        metrics_addr,
        metrics,
        listeners,
        tasks: vec![reconcile, served],
        _xds: xds,
    })
}

/// The Gateway resource named `name` in the config stream.
fn gateway_config(state: &weft_xds::ClientState, name: &str) -> Result<GatewayConfig, String> {
    use prost::Message;
    let held = state
        .resources
        .get(weft_xds::GATEWAY_TYPE)
        .and_then(|m| m.get(name))
        .ok_or_else(|| format!("no Gateway {name} in the configuration"))?;
    let message = weft_xds::proto::weft::Gateway::decode(held.body.value.as_slice())
        .map_err(|e| format!("Gateway {name} does not decode: {e}"))?;
    serde_json::from_str(&message.config_json)
        .map_err(|e| format!("Gateway {name} is not understood: {e}"))
}

/// The listeners bound, by name.
struct Listeners {
    bound: HashMap<String, Bound>,
    /// Connections each listener holds open at once.
    limits: ConnLimits,
    metrics: Metrics,
    /// Tunnels for passthrough listeners.
    connector: HboneConnector,
    /// Tunnels from other networks, for an east-west listener: this
    /// gateway's HBONE server settings and the handler that forwards them.
    east_west: (Arc<rustls::ServerConfig>, Arc<EastWest>),
}

struct Bound {
    signature: String,
    addr: SocketAddr,
    /// Passes connections through instead of serving HTTP.
    passthrough: Option<weft_core::l7::Passthrough>,
    /// The listener's TLS (none: plain HTTP), swapped in place when only
    /// its settings change (a rotated certificate), so the socket stays.
    tls: Arc<ArcSwap<Option<tokio_rustls::TlsAcceptor>>>,
    task: JoinHandle<()>,
}

impl Listeners {
    /// Binds new listeners, updates changed ones (new TLS settings on the
    /// same port are swapped in without closing the socket), closes
    /// removed ones. A listener whose TLS settings do not load, or whose
    /// new port cannot be bound, is logged and keeps serving as before
    /// (or stays down if it is new); the others are unaffected.
    fn apply(
        &mut self,
        wanted: &[GatewayListener],
        ip: std::net::IpAddr,
        engine: &Arc<Engine>,
        gateway: &str,
    ) {
        let keep: Vec<&str> = wanted.iter().map(|l| l.name.as_str()).collect();
        self.bound.retain(|name, b| {
            let stays = keep.contains(&name.as_str());
            if !stays {
                b.task.abort();
            }
            stays
        });
        for listener in wanted {
            let signature = serde_json::to_string(listener).unwrap_or_default();
            let held = self.bound.get(&listener.name);
            if held.is_some_and(|b| b.signature == signature) {
                continue;
            }
            let previously = if held.is_some() {
                "; it keeps its previous settings"
            } else {
                ""
            };
            let tls = match &listener.tls {
                None => None,
                Some(t) => match server_tls(t) {
                    Ok(c) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(c))),
                    Err(e) => {
                        tracing::error!(%gateway, listener = %listener.name, error = %e, "the listener's TLS settings do not load{previously}");
                        continue;
                    }
                },
            };
            let addr = SocketAddr::new(ip, listener.port);
            if let Some(b) = self.bound.get_mut(&listener.name)
                && b.addr == addr
                && b.passthrough == listener.passthrough
            {
                b.tls.store(Arc::new(tls));
                b.signature = signature;
                tracing::info!(%gateway, listener = %listener.name, %addr, "listener updated in place");
                continue;
            }
            let socket = match std::net::TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            }) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(%gateway, listener = %listener.name, %addr, error = %e, "cannot bind the listener{previously}");
                    continue;
                }
            };
            if let Some(old) = self.bound.remove(&listener.name) {
                old.task.abort();
            }
            tracing::info!(%gateway, listener = %listener.name, %addr, tls = tls.is_some(), passthrough = ?listener.passthrough, "listening");
            let tls = Arc::new(ArcSwap::from_pointee(tls));
            if listener.passthrough == Some(weft_core::l7::Passthrough::EastWest) {
                let (server, handler) = self.east_west.clone();
                let task = tokio::spawn(weft_hbone::server::serve(
                    socket,
                    server,
                    handler,
                    weft_hbone::server::Limits::default(),
                    std::future::pending(),
                ));
                self.bound.insert(
                    listener.name.clone(),
                    Bound {
                        signature,
                        addr,
                        passthrough: listener.passthrough,
                        tls,
                        task,
                    },
                );
                continue;
            }
            let front = match listener.passthrough {
                Some(kind) => Front::Passthrough(Box::new(self.connector.clone()), kind),
                None => Front::Http(tls.clone()),
            };
            let task = tokio::spawn(accept(
                socket,
                front,
                engine.clone(),
                crate::configure::listener_target(&listener.name),
                (self.limits, self.metrics.clone()),
            ));
            self.bound.insert(
                listener.name.clone(),
                Bound {
                    signature,
                    addr,
                    passthrough: listener.passthrough,
                    tls,
                    task,
                },
            );
        }
    }

    fn close_all(&mut self) {
        for (_, b) in self.bound.drain() {
            b.task.abort();
        }
    }
}

/// What a listener does with a connection.
enum Front {
    /// HTTP, over TLS when the listener has TLS settings (swappable).
    Http(Arc<ArcSwap<Option<tokio_rustls::TlsAcceptor>>>),
    /// Connections passed through ([`crate::fronts::passthrough`]).
    Passthrough(Box<HboneConnector>, weft_core::l7::Passthrough),
}

/// Accepts connections on one listener: each is admitted (or refused)
/// by the listener's [`Admission`] before anything is read from it.
async fn accept(
    listener: tokio::net::TcpListener,
    front: Front,
    engine: Arc<Engine>,
    target: String,
    (limits, metrics): (ConnLimits, Metrics),
) {
    let admission = Admission::new(limits);
    let mut refused: u64 = 0;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%target, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ticket = match admission.admit(peer.ip()) {
            Ok(t) => t,
            Err(why) => {
                refused += 1;
                metrics.connection_refused(&target, why.reason());
                if refused.is_power_of_two() {
                    tracing::warn!(listener = %target, %peer, refused, reason = why.reason(), max = limits.max_connections, per_source = limits.max_per_source, "connection refused at accept");
                }
                continue;
            }
        };
        if ticket.shed_another {
            metrics.connection_closed(&target, "overload_shed");
        }
        let _ = tcp.set_nodelay(true);
        let (engine, target, metrics) = (engine.clone(), target.clone(), metrics.clone());
        let tls = match &front {
            Front::Http(tls) => tls.load().as_ref().clone(),
            Front::Passthrough(connector, kind) => {
                let connector = HboneConnector::clone(connector);
                let kind = *kind;
                tokio::spawn(async move {
                    // Passthrough bounds its own ClientHello wait; once
                    // spliced it is busy and never shed.
                    let _busy = ticket.activity.request();
                    let _ticket = ticket;
                    let to = crate::fronts::passthrough::Listener {
                        target,
                        kind,
                        connector,
                    };
                    crate::fronts::passthrough::serve(tcp, peer, engine, to, metrics).await;
                });
                continue;
            }
        };
        tokio::spawn(async move {
            let activity = ticket.activity.clone();
            let handshake = async {
                match tls {
                    None => Ok(Either::Left(tcp)),
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(stream) => Ok(Either::Right(stream)),
                        Err(e) => Err(e),
                    },
                }
            };
            // The handshake counts against the header timeout; a shed
            // connection stops here too.
            let shaken = tokio::select! {
                r = tokio::time::timeout(limits.header_timeout, handshake) => r,
                () = activity.close.notified() => return,
            };
            let conn = Conn {
                peer,
                engine,
                target,
                ticket,
                limits,
                metrics: metrics.clone(),
            };
            match shaken {
                Ok(Ok(Either::Left(tcp))) => serve(tcp, None, conn).await,
                Ok(Ok(Either::Right(stream))) => {
                    let principal = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(principal_of);
                    serve(stream, Some(principal), conn).await;
                }
                Ok(Err(e)) => {
                    metrics.connection_refused(&conn.target, "tls_handshake");
                    tracing::info!(%peer, listener = %conn.target, error = %e, "TLS handshake refused");
                }
                Err(_) => {
                    metrics.connection_refused(&conn.target, "tls_timeout");
                    tracing::info!(%peer, listener = %conn.target, "TLS handshake not finished within {:?}; closed", limits.header_timeout);
                }
            }
        });
    }
}

/// A plain TCP stream or a TLS one.
enum Either<A, B> {
    Left(A),
    Right(B),
}

/// One admitted connection and what serving it needs.
struct Conn {
    peer: SocketAddr,
    engine: Arc<Engine>,
    target: String,
    ticket: Ticket,
    limits: ConnLimits,
    metrics: Metrics,
}

/// How long a connection told to finish may take before it is dropped.
const GRACE: Duration = Duration::from_secs(5);

/// Serves HTTP/1.1 and HTTP/2 on one admitted connection until it ends,
/// is shed, or passes a deadline of its [`ConnLimits`]. `tls` is `Some`
/// for HTTPS, holding the client certificate's principal if one was
/// presented.
async fn serve<I: Transport>(io: I, tls: Option<Option<String>>, c: Conn) {
    let https = tls.is_some();
    let principal = tls.flatten();
    let peer = c.peer;
    let activity = c.ticket.activity.clone();
    let (engine, target) = (c.engine.clone(), c.target.clone());
    let requests = activity.clone();
    let handle = move |mut req: http::Request<hyper::body::Incoming>| -> Reply {
        let in_flight = requests.request();
        req.extensions_mut().insert(PeerAddr(peer));
        if https {
            req.extensions_mut().insert(Tls);
        }
        if let Some(p) = &principal {
            req.extensions_mut().insert(ClientPrincipal(p.clone()));
        }
        let headers = req.headers_mut();
        if let Ok(v) = http::HeaderValue::from_str(&peer.ip().to_string()) {
            headers.append("x-forwarded-for", v);
        }
        headers.insert(
            "x-forwarded-proto",
            http::HeaderValue::from_static(if https { "https" } else { "http" }),
        );
        let (engine, target) = (engine.clone(), target.clone());
        Box::pin(async move {
            let response = engine.handle_for(Some(&target), req).await;
            Ok(response.map(|b| Tracked::new(b, in_flight)))
        })
    };
    let mut protocols = Protocols::default();
    protocols
        .h1
        .timer(hyper_util::rt::TokioTimer::new())
        .max_buf_size(MAX_HEADER_BYTES)
        .header_read_timeout(c.limits.header_timeout);
    // hyper's header timer runs while a connection waits warm: it parks
    // well before.
    protocols.warm = protocols.warm.min(c.limits.header_timeout / 2);
    protocols
        .h2
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(MAX_STREAMS);
    // Resolves with the reason this connection must close.
    let stop = async {
        loop {
            let (deadline, reason) = activity.deadline(&c.limits);
            tokio::select! {
                () = activity.close.notified() => break "overload_shed",
                () = tokio::time::sleep_until(deadline) => {
                    // Still past it now (a request may have started since)?
                    let (again, reason_now) = activity.deadline(&c.limits);
                    if again <= tokio::time::Instant::now() && reason_now == reason {
                        break reason;
                    }
                }
            }
        }
    };
    match downstream::serve(io, handle, &protocols, &activity, stop, GRACE).await {
        Ended::Closed(None) => {}
        Ended::Closed(Some(e)) => tracing::debug!(%peer, error = %e, "gateway connection ended"),
        Ended::Stopped(why) => {
            if why != "overload_shed" {
                c.metrics.connection_closed(&c.target, why);
            }
            tracing::debug!(%peer, listener = %c.target, reason = why, "closed connection");
        }
    }
}

/// A client certificate's principal, as Envoy derives it: the first URI
/// SAN (without `spiffe://`), else the first DNS SAN, else the subject.
pub fn principal_of(cert: &CertificateDer<'_>) -> Option<String> {
    let names = Names::of(cert)?;
    names
        .uris
        .first()
        .map(|u| u.strip_prefix("spiffe://").unwrap_or(u).to_owned())
        .or_else(|| names.dns.first().cloned())
        .or(Some(names.subject))
}

/// What a certificate names: its URI and DNS SANs, its subject.
struct Names {
    uris: Vec<String>,
    dns: Vec<String>,
    subject: String,
}

impl Names {
    /// `None` when the certificate does not parse.
    fn of(cert: &CertificateDer<'_>) -> Option<Names> {
        use x509_parser::extensions::GeneralName;
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
        let mut names = Names {
            uris: Vec::new(),
            dns: Vec::new(),
            subject: parsed.subject().to_string(),
        };
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::URI(u) => names.uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => names.dns.push((*d).to_owned()),
                    _ => {}
                }
            }
        }
        Some(names)
    }
}

/// Why a listener's TLS settings did not load.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// A chain or key that does not parse.
    #[error("Secret {0}: {1}")]
    Certificate(String, String),
    /// The client CA bundle.
    #[error("client CA bundle: {0}")]
    ClientCa(String),
}

/// The rustls server configuration of an HTTPS listener.
pub fn server_tls(t: &ListenerTls) -> Result<rustls::ServerConfig, TlsSetupError> {
    let provider = weft_ca::tls::provider();
    let mut certs = Vec::new();
    for c in &t.certificates {
        let bad =
            |e: &dyn std::fmt::Display| TlsSetupError::Certificate(c.secret.clone(), e.to_string());
        let chain = weft_ca::cert::certs_from_pem(c.chain_pem.as_bytes(), &c.secret)
            .map_err(|e| bad(&e))?;
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
            .map_err(|e| bad(&format!("tls.key: {e}")))?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| bad(&format!("tls.key: {e}")))?;
        let names = chain
            .first()
            .and_then(Names::of)
            .map(|n| n.dns)
            .unwrap_or_default();
        let certified = CertifiedKey::new(chain, signing);
        // The leaf must parse and carry the key's public half.
        certified
            .keys_match()
            .map_err(|e| bad(&format!("tls.crt does not go with tls.key: {e}")))?;
        certs.push((names, Arc::new(certified)));
    }
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Certificate(String::new(), e.to_string()))?;
    let builder = match &t.client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in weft_ca::cert::certs_from_pem(pem.as_bytes(), "ca.crt")
                .map_err(|e| TlsSetupError::ClientCa(e.to_string()))?
            {
                roots
                    .add(ca)
                    .map_err(|e| TlsSetupError::ClientCa(e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if t.client_certificate_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsSetupError::ClientCa(e.to_string()))?,
            )
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(BySni(certs)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Picks a listener's certificate by SNI: the first whose DNS names match
/// (`*.` wildcards); without SNI (a client connecting by address) the
/// first certificate; an SNI no certificate covers fails the handshake.
#[derive(Debug)]
struct BySni(Vec<(Vec<String>, Arc<CertifiedKey>)>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else {
            return self.0.first().map(|(_, c)| c.clone());
        };
        let found = self
            .0
            .iter()
            .find(|(names, _)| names.iter().any(|n| weft_core::l7::host_matches(n, sni)));
        if found.is_none() {
            tracing::info!(%sni, "TLS handshake refused: no certificate of this listener covers the server name");
        }
        found.map(|(_, c)| c.clone())
    }
}
