//! The four request series (count, duration, request and response bytes)
//! of one Istio label set, found per request by one lookup.
//!
//! A `prometheus_client` family hashes its whole label set with SipHash on
//! every `get_or_create`; Istio's request labels are seventeen, thirteen of
//! them strings. Built and hashed for four families per request, they cost
//! a few percent of the L7 engine's CPU (`bench/l7`). Here a request's
//! labels are hashed once, from borrowed parts and with a fast hash, and
//! compared in place with the label set of the series found; they are
//! built (and the families asked) only the first time a label set is seen.
//! The series handles share their values with the families, which stay
//! what is registered and exported. Before that lookup, each thread
//! remembers its last request's series with the shared values (peers,
//! service) it was for: a run of requests between the same parties,
//! the usual case, is counted after a few comparisons of addresses.

use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, RwLock};

use hashbrown::HashTable;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use weft_telemetry::flags::Flags;
use weft_telemetry::labels::{self, Peer, Reporter, RequestLabels, Service};

/// Label sets remembered at most; beyond, requests of a new label set go
/// to the families directly (cardinality that high is a problem of its
/// own, and the families still count every request).
pub const MAX_REMEMBERED: usize = 4096;

/// One request's labels, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct Parts<'a> {
    /// `reporter`.
    pub reporter: Reporter,
    /// The caller.
    pub source: &'a Peer,
    /// The callee.
    pub destination: &'a Peer,
    /// The service.
    pub service: &'a Service,
    /// `request_protocol`.
    pub protocol: &'static str,
    /// `response_code`.
    pub code: u16,
    /// `response_flags`.
    pub flags: Flags,
    /// Whether the caller came over mutual TLS.
    pub mtls: bool,
}

impl Parts<'_> {
    /// The label set these parts make.
    pub fn labels(&self) -> RequestLabels {
        labels::request(
            self.reporter,
            self.source,
            self.destination,
            self.service,
            self.protocol,
            self.code,
            self.flags,
            self.mtls,
        )
    }

    /// The strings of the label set, in one order for [`Parts`] and
    /// [`RequestLabels`] alike, then the code.
    fn strings(&self) -> ([&str; 19], u16) {
        let (s, d, v) = (self.source, self.destination, self.service);
        (
            [
                self.reporter.as_str(),
                &s.workload,
                &s.namespace,
                &s.principal,
                &s.canonical_service,
                &s.canonical_revision,
                &s.cluster,
                &d.workload,
                &d.namespace,
                &d.principal,
                &d.canonical_service,
                &d.canonical_revision,
                &d.cluster,
                &v.host,
                &v.name,
                &v.namespace,
                self.protocol,
                self.flags.as_str(),
                labels::security(self.mtls),
            ],
            self.code,
        )
    }
}

/// [`Parts::strings`] of a built label set.
fn strings(l: &RequestLabels) -> ([&str; 19], u16) {
    let p = &l.parties;
    (
        [
            p.reporter,
            &p.source_workload,
            &p.source_workload_namespace,
            &p.source_principal,
            &p.source_canonical_service,
            &p.source_canonical_revision,
            &p.source_cluster,
            &p.destination_workload,
            &p.destination_workload_namespace,
            &p.destination_principal,
            &p.destination_canonical_service,
            &p.destination_canonical_revision,
            &p.destination_cluster,
            &p.destination_service,
            &p.destination_service_name,
            &p.destination_service_namespace,
            l.request_protocol,
            l.response_flags,
            l.connection_security_policy,
        ],
        l.response_code,
    )
}

/// The series of one label set.
#[derive(Clone, Debug)]
pub struct Series {
    /// `istio_requests_total`.
    pub requests: Counter,
    /// `istio_request_duration_milliseconds`.
    pub duration: Histogram,
    /// `istio_request_bytes`.
    pub request_bytes: Histogram,
    /// `istio_response_bytes`.
    pub response_bytes: Histogram,
}

/// A thread's last request series and what it was for. It holds the
/// shared values it compares by address (and the table), so no other
/// value can take their place at that address while it is kept.
struct Last {
    table: Arc<RwLock<HashTable<(RequestLabels, Series)>>>,
    source: Arc<Peer>,
    destination: Arc<Peer>,
    service: Arc<Service>,
    reporter: Reporter,
    protocol: &'static str,
    code: u16,
    flags: Flags,
    mtls: bool,
    series: Series,
}

impl Last {
    fn answers(
        &self,
        remembered: &Remembered,
        parts: &Parts<'_>,
        (source, destination, service): (&Arc<Peer>, &Arc<Peer>, &Arc<Service>),
    ) -> bool {
        Arc::ptr_eq(&self.table, &remembered.table)
            && Arc::ptr_eq(&self.source, source)
            && Arc::ptr_eq(&self.destination, destination)
            && Arc::ptr_eq(&self.service, service)
            && self.reporter == parts.reporter
            && self.protocol == parts.protocol
            && self.code == parts.code
            && self.flags == parts.flags
            && self.mtls == parts.mtls
    }
}

thread_local! {
    static LAST: std::cell::RefCell<Option<Last>> = const { std::cell::RefCell::new(None) };
}

/// The series of the label sets seen so far.
#[derive(Clone, Debug, Default)]
pub struct Remembered {
    table: Arc<RwLock<HashTable<(RequestLabels, Series)>>>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl Remembered {
    fn hash(&self, (strings, code): ([&str; 19], u16)) -> u64 {
        let mut h = self.hasher.build_hasher();
        for s in strings {
            h.write(s.as_bytes());
            h.write_u8(0xff);
        }
        h.write_u16(code);
        h.finish()
    }

    /// The series of `parts`: remembered, else made by `make` from the
    /// label set (and remembered while there is room).
    pub fn get(&self, parts: &Parts<'_>, make: impl FnOnce(&RequestLabels) -> Series) -> Series {
        let key = parts.strings();
        let hash = self.hash(key);
        let same = |(labels, _): &(RequestLabels, Series)| strings(labels) == key;
        if let Ok(table) = self.table.read()
            && let Some((_, series)) = table.find(hash, same)
        {
            return series.clone();
        }
        let labels = parts.labels();
        let series = make(&labels);
        if let Ok(mut table) = self.table.write()
            && table.len() < MAX_REMEMBERED
            && table.find(hash, same).is_none()
        {
            table.insert_unique(hash, (labels, series.clone()), |(l, _)| {
                self.hash(strings(l))
            });
        }
        series
    }

    /// [`Remembered::get`], asking first this thread's last answer: a
    /// request with the same parties (the same shared values, compared by
    /// address) and the same other labels as the thread's last one gets
    /// its series without the label strings being hashed and compared.
    /// `shared` holds what `parts` borrows: source, destination, service.
    pub fn get_shared(
        &self,
        parts: &Parts<'_>,
        shared: (&Arc<Peer>, &Arc<Peer>, &Arc<Service>),
        make: impl FnOnce(&RequestLabels) -> Series,
    ) -> Series {
        debug_assert!(
            std::ptr::eq(parts.source, &**shared.0)
                && std::ptr::eq(parts.destination, &**shared.1)
                && std::ptr::eq(parts.service, &**shared.2)
        );
        LAST.with(|last| {
            if let Some(l) = last.borrow().as_ref()
                && l.answers(self, parts, shared)
            {
                return l.series.clone();
            }
            let series = self.get(parts, make);
            *last.borrow_mut() = Some(Last {
                table: self.table.clone(),
                source: shared.0.clone(),
                destination: shared.1.clone(),
                service: shared.2.clone(),
                reporter: parts.reporter,
                protocol: parts.protocol,
                code: parts.code,
                flags: parts.flags,
                mtls: parts.mtls,
                series: series.clone(),
            });
            series
        })
    }

    /// Label sets remembered.
    pub fn len(&self) -> usize {
        self.table.read().map_or(0, |t| t.len())
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(source: &'a Peer, destination: &'a Peer, service: &'a Service) -> Parts<'a> {
        Parts {
            reporter: Reporter::Waypoint,
            source,
            destination,
            service,
            protocol: "http",
            code: 200,
            flags: Flags::default(),
            mtls: true,
        }
    }

    #[test]
    fn one_series_per_label_set() {
        let remembered = Remembered::default();
        let a = Peer::from_principal("cluster.local/ns/shop/sa/frontend");
        let b = Peer::from_principal("cluster.local/ns/shop/sa/reviews");
        let service = Service::from_host("reviews.shop.svc.cluster.local", None);
        let mut made = Vec::new();
        let mut get = |p: &Parts<'_>| {
            remembered.get(p, |labels| {
                made.push(labels.clone());
                Series {
                    requests: Counter::default(),
                    duration: Histogram::new([1.0]),
                    request_bytes: Histogram::new([1.0]),
                    response_bytes: Histogram::new([1.0]),
                }
            })
        };
        get(&parts(&a, &b, &service)).requests.inc();
        get(&parts(&a, &b, &service)).requests.inc();
        let other_code = Parts {
            code: 503,
            ..parts(&a, &b, &service)
        };
        get(&other_code).requests.inc();
        // The same strings in other fields are another label set.
        get(&parts(&b, &a, &service)).requests.inc();
        let total = get(&parts(&a, &b, &service)).requests.get();
        assert_eq!(total, 2, "the first label set's counter is shared");
        assert_eq!(made.len(), 3);
        assert_eq!(made[0], parts(&a, &b, &service).labels());
        assert_eq!(made[1].response_code, 503);
        assert_eq!(remembered.len(), 3);
    }

    /// The thread's last answer serves the same parties again; anything
    /// else goes to the table, which still makes each label set once.
    #[test]
    fn the_last_answer_is_reused_only_for_the_same_request() {
        let a = Arc::new(Peer::from_principal("cluster.local/ns/shop/sa/frontend"));
        let b = Arc::new(Peer::from_principal("cluster.local/ns/shop/sa/reviews"));
        let a_again = Arc::new(Peer::from_principal("cluster.local/ns/shop/sa/frontend"));
        let service = Arc::new(Service::from_host("reviews.shop.svc.cluster.local", None));
        let (one, two) = (Remembered::default(), Remembered::default());
        let made = std::cell::Cell::new(0);
        let get = |r: &Remembered, p: &Parts<'_>, shared| {
            r.get_shared(p, shared, |_| {
                made.set(made.get() + 1);
                Series {
                    requests: Counter::default(),
                    duration: Histogram::new([1.0]),
                    request_bytes: Histogram::new([1.0]),
                    response_bytes: Histogram::new([1.0]),
                }
            })
        };
        let ab = parts(&a, &b, &service);
        get(&one, &ab, (&a, &b, &service)).requests.inc();
        get(&one, &ab, (&a, &b, &service)).requests.inc();
        assert_eq!(made.get(), 1);
        // Another code: another series.
        let failed = Parts { code: 503, ..ab };
        assert_eq!(get(&one, &failed, (&a, &b, &service)).requests.get(), 0);
        // An equal peer in another allocation: the table's series.
        let ab_again = parts(&a_again, &b, &service);
        let counted = get(&one, &ab_again, (&a_again, &b, &service));
        assert_eq!(counted.requests.get(), 2);
        assert_eq!(made.get(), 2, "no new series for equal labels");
        // Another table on the same thread: its own series.
        assert_eq!(
            get(&two, &ab_again, (&a_again, &b, &service))
                .requests
                .get(),
            0
        );
        assert_eq!(made.get(), 3);
    }
}
