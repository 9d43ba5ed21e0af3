//! The request checks of a policy, built once per configuration and
//! shared by every target they apply to: the JWT authenticator, the
//! authorization policies, and the rate limiter (kept across changes when
//! its policy did not change, so local counts survive).

use std::collections::HashMap;
use std::sync::Arc;

use weft_core::l7::{self, L7Policy};

use crate::engine::Config;
use crate::policy::ratelimit::{RateLimiter, Rule, Store};

/// The JWT authenticator for a service's issuers: inline keys decoded
/// (a JWKS that does not parse — validation makes that rare — leaves that
/// issuer without keys, so its tokens are refused), fetched keys shared
/// through `jwks`.
fn authenticator(
    issuers: &[l7::JwtIssuer],
    jwks: &crate::policy::jwks::Fetcher,
) -> crate::policy::jwt::Authenticator {
    use crate::policy::jwt::{JwtRule, KeySource, Location};
    crate::policy::jwt::Authenticator::new(
        issuers
            .iter()
            .map(|i| JwtRule {
                issuer: i.issuer.clone(),
                audiences: i.audiences.clone(),
                keys: if i.jwks_uri.is_empty() {
                    KeySource::inline(&serde_json::from_str(&i.jwks).unwrap_or_else(|e| {
                        tracing::warn!(issuer = %i.issuer, error = %e, "JWKS not understood; tokens of this issuer are refused");
                        serde_json::Value::Null
                    }))
                } else {
                    KeySource::Remote(jwks.keys(&i.jwks_uri, i.fetch_timeout))
                },
                locations: i
                    .from_headers
                    .iter()
                    .map(|(n, p)| Location::Header(n.clone(), p.clone()))
                    .chain(i.from_params.iter().map(|q| Location::Query(q.clone())))
                    .chain(i.from_cookies.iter().map(|c| Location::Cookie(c.clone())))
                    .collect(),
                forward_original_token: i.forward_original_token,
                claim_to_headers: i.claim_to_headers.clone(),
            })
            .collect(),
    )
}

/// A policy's request checks, built once and shared by every target
/// (service port, gateway listener) it applies to.
pub(crate) struct Checks {
    authn: Option<Arc<crate::policy::jwt::Authenticator>>,
    authz: Option<Arc<Vec<l7::L7Authz>>>,
}

impl Checks {
    pub(crate) fn of(policy: Option<&L7Policy>, jwks: &crate::policy::jwks::Fetcher) -> Checks {
        Checks {
            authn: policy
                .filter(|p| !p.jwt.is_empty())
                .map(|p| Arc::new(authenticator(&p.jwt, jwks))),
            authz: policy
                .filter(|p| !p.authz.is_empty())
                .map(|p| Arc::new(p.authz.clone())),
        }
    }

    pub(crate) fn attach(&self, config: &mut Config, target: &str) {
        if let Some(a) = &self.authn {
            config.authn.insert(target.to_owned(), a.clone());
        }
        if let Some(a) = &self.authz {
            config.authz.insert(target.to_owned(), a.clone());
        }
    }
}

/// The store asking rate limit service `service` (the channel connects on
/// first use; an address that is not one applies the failure mode).
fn service_store(service: &l7::RateLimitService, fail_open: bool) -> Store {
    use crate::policy::ratelimit::rls::rate_limit_service_client::RateLimitServiceClient;
    match tonic::transport::Endpoint::from_shared(format!("http://{}", service.address)) {
        Ok(endpoint) => Store::Service {
            client: RateLimitServiceClient::new(
                endpoint
                    .connect_timeout(std::time::Duration::from_secs(2))
                    .connect_lazy(),
            ),
            address: service.address.clone(),
            domain: service.domain.clone(),
            timeout: service.timeout,
            fail_open,
        },
        Err(e) => Store::Unreachable {
            reason: format!("rate limit service address {}: {e}", service.address),
            fail_open,
        },
    }
}

/// The rate limiter for `limit`, reusing `previous` when built from the
/// same policy (so local counts survive configuration changes).
pub(crate) fn limiter(
    limit: &l7::RateLimit,
    redis: &HashMap<String, redis::aio::ConnectionManager>,
    previous: Option<&Arc<RateLimiter>>,
) -> Arc<RateLimiter> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{limit:?}").hash(&mut h);
    let signature = h.finish();
    if let Some(kept) = previous.filter(|p| p.signature == signature) {
        return kept.clone();
    }
    let store = match (&limit.service, &limit.redis) {
        (Some(service), _) => service_store(service, limit.fail_open),
        (None, None) => Store::Local(crate::policy::ratelimit::LocalCounts::default()),
        (None, Some(url)) => match redis.get(url) {
            Some(conn) => Store::Global {
                redis: conn.clone(),
                fail_open: limit.fail_open,
            },
            None => Store::Unreachable {
                reason: format!("redis at {url} was unreachable when the limit was set up"),
                fail_open: limit.fail_open,
            },
        },
    };
    Arc::new(RateLimiter {
        policy: limit.policy.clone(),
        rules: limit
            .rules
            .iter()
            .map(|r| Rule {
                name: r.name.clone(),
                when: r.when.clone(),
                count_by: r.count_by.clone(),
                requests: r.requests,
                period: r.period,
                burst: r.burst,
            })
            .collect(),
        store,
        signature,
    })
}
