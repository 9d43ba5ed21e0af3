//! The names of the metric families weft's proxies export and its control
//! plane reads, in one place: a producer registers the base name (the
//! Prometheus client appends `_total`, `_bucket`, …), a reader of the text
//! format uses the exposition name. Both come from here, so they cannot
//! drift.

/// A family's base name and, for counters and histograms, the name its
/// samples carry in the text format.
macro_rules! family {
    ($(#[$doc:meta])* $name:ident = $lit:literal) => {
        $(#[$doc])*
        pub const $name: &str = $lit;
    };
    ($(#[$doc:meta])* $name:ident = $lit:literal, $exposed:ident = + $suffix:literal) => {
        $(#[$doc])*
        pub const $name: &str = $lit;
        #[doc = concat!("`", $lit, $suffix, "`: how [`", stringify!($name), "`] appears in the text format.")]
        pub const $exposed: &str = concat!($lit, $suffix);
    };
}

family!(
    /// Istio: requests handled (counter), by the standard labels.
    REQUESTS = "istio_requests",
    REQUESTS_TOTAL = + "_total"
);
family!(
    /// Istio: request duration in milliseconds (histogram).
    REQUEST_DURATION = "istio_request_duration_milliseconds",
    REQUEST_DURATION_BUCKET = + "_bucket"
);
family!(
    /// Istio: request body sizes (histogram).
    REQUEST_BYTES = "istio_request_bytes"
);
family!(
    /// Istio: response body sizes (histogram).
    RESPONSE_BYTES = "istio_response_bytes"
);
family!(
    /// Istio: TCP connections opened (counter).
    TCP_OPENED = "istio_tcp_connections_opened",
    TCP_OPENED_TOTAL = + "_total"
);
family!(
    /// Istio: TCP connections closed (counter).
    TCP_CLOSED = "istio_tcp_connections_closed"
);
family!(
    /// Istio: bytes sent toward the destination (counter).
    TCP_SENT_BYTES = "istio_tcp_sent_bytes"
);
family!(
    /// Istio: bytes received from the destination (counter).
    TCP_RECEIVED_BYTES = "istio_tcp_received_bytes"
);
family!(
    /// weft: retries sent upstream (counter).
    UPSTREAM_RETRIES = "weft_upstream_retries"
);
family!(
    /// weft: retries not sent because the budget was exhausted (counter).
    RETRY_BUDGET_EXHAUSTED = "weft_retry_budget_exhausted"
);
family!(
    /// weft: request-level authorization decisions (counter).
    AUTHZ_DECISIONS = "weft_authz_decisions",
    AUTHZ_DECISIONS_TOTAL = + "_total"
);
family!(
    /// weft: external authorization failures (counter).
    EXT_AUTHZ_ERRORS = "weft_ext_authz_errors"
);
family!(
    /// weft: rate-limit decisions (counter).
    RATELIMIT_DECISIONS = "weft_ratelimit_decisions"
);
family!(
    /// weft: tries cut by the per-try timeout (counter).
    UPSTREAM_TRY_TIMEOUTS = "weft_upstream_try_timeouts"
);
family!(
    /// weft: connections a gateway listener refused (counter).
    GATEWAY_CONNECTIONS_REFUSED = "weft_gateway_connections_refused"
);
family!(
    /// weft: connections a gateway listener closed on its own (counter).
    GATEWAY_CONNECTIONS_CLOSED = "weft_gateway_connections_closed"
);
family!(
    /// weft: seconds until each held certificate expires (gauge).
    CERT_EXPIRY_SECONDS = "weft_cert_expiry_seconds"
);

family!(
    /// weft control plane: configurations applied (counter).
    CONFIG_APPLIED = "weft_config_applied"
);
family!(
    /// weft control plane: configurations rejected or held back (counter).
    CONFIG_REJECTED = "weft_config_rejected"
);
family!(
    /// weft control plane: the configuration version in force (gauge).
    CONFIG_VERSION = "weft_config_version"
);
family!(
    /// weft control plane: warnings in the configuration in force (gauge).
    CONFIG_WARNINGS = "weft_config_warnings"
);
family!(
    /// weft control plane: 1 while the config stream from a remote
    /// cluster's control plane is up (gauge, label `cluster`).
    REMOTE_CLUSTER_CONNECTED = "weft_remote_cluster_connected"
);
family!(
    /// weft control plane: 1 while a remote cluster's endpoints in use are
    /// its last known ones from a stream down longer than its `staleAfter`
    /// (gauge).
    REMOTE_CLUSTER_STALE = "weft_remote_cluster_stale"
);
family!(
    /// weft control plane: a remote cluster's endpoints in use (gauge).
    REMOTE_CLUSTER_ENDPOINTS = "weft_remote_cluster_endpoints"
);
family!(
    /// weft control plane: updates received from a remote cluster and
    /// applied (counter).
    REMOTE_CLUSTER_UPDATES = "weft_remote_cluster_updates"
);
family!(
    /// weft control plane: config stream responses pushed (counter).
    XDS_PUSHES = "weft_xds_pushes"
);
family!(
    /// weft control plane: responses proxies rejected (counter).
    XDS_NACKS = "weft_xds_nacks"
);
family!(
    /// weft control plane: proxies connected to the config stream (gauge).
    XDS_CONNECTED_PROXIES = "weft_xds_connected_proxies"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_names_extend_the_base_names() {
        for (base, exposed, suffix) in [
            (REQUESTS, REQUESTS_TOTAL, "_total"),
            (REQUEST_DURATION, REQUEST_DURATION_BUCKET, "_bucket"),
            (TCP_OPENED, TCP_OPENED_TOTAL, "_total"),
            (AUTHZ_DECISIONS, AUTHZ_DECISIONS_TOTAL, "_total"),
        ] {
            assert_eq!(format!("{base}{suffix}"), exposed);
        }
    }
}
