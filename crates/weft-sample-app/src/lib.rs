//! # weft-sample-app
//!
//! A small, fast, httpbin-style test server used as the workload behind weft
//! proxies in the examples, the end-to-end tests and the benchmarks. One
//! listening port speaks both HTTP/1.1 and h2c (HTTP/2 with prior knowledge,
//! cleartext); the endpoints (`/`, `/status/{code}`, `/delay/{seconds}`,
//! `/headers`, `/echo`, `/ip`, `/healthz`) make it easy to observe what a proxy
//! did to a request, and the [`AppConfig`] knobs inject latency and failures so
//! that retries, outlier detection and load balancing can be exercised. Every
//! response names the instance that produced it (`x-weft-app`,
//! `x-weft-version`, `x-weft-locality`), so a test can tell which backend
//! served it. A raw TCP echo mode ([`serve_tcp_echo`]) covers opaque TCP
//! traffic.
//!
//! Both servers run until the `shutdown` future resolves, then stop accepting
//! and let the connections already open finish before returning.

#![forbid(unsafe_code)]

mod config;
mod echo;
mod error;
mod http;
mod listener;
mod routing;

pub use config::{AppConfig, Mode};
pub use echo::serve_tcp_echo;
pub use error::AppError;
pub use http::serve_http;
