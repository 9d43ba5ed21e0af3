//! Targets (c) and (d): HAProxy and nginx from Debian as reverse proxies
//! with the same route, retries and timeouts as weft's hop, each on one
//! thread (`nbthread 1`; one nginx process, no master), keeping
//! HTTP/1.1 connections to the backend alive. Each listens twice: HTTP/1.1
//! on one port, h2c (prior knowledge, as h2load speaks it) on the next.

use std::net::SocketAddr;
use std::path::Path;

/// HAProxy's configuration.
pub(crate) fn haproxy(h1: SocketAddr, h2: SocketAddr, backend: SocketAddr) -> String {
    format!(
        "global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 1s
  timeout queue 2s
  retries 2
  retry-on conn-failure empty-response response-timeout 502 503 504
  option http-keep-alive
frontend bench
  bind {h1}
  bind {h2} proto h2
  default_backend app
backend app
  http-reuse always
  server app {backend} maxconn 0
"
    )
}

/// nginx's configuration; `dir` takes its pid file, logs and temporary
/// files.
pub(crate) fn nginx(h1: SocketAddr, h2: SocketAddr, backend: SocketAddr, dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 8000; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  upstream app {{ server {backend} max_fails=0; keepalive 512; keepalive_requests 1000000; }}
  server {{
    listen {h1};
    listen {h2} http2;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_connect_timeout 1s;
      proxy_read_timeout 1s;
      proxy_next_upstream error timeout http_502 http_503 http_504;
      proxy_next_upstream_tries 3;
      proxy_next_upstream_timeout 2s;
    }}
  }}
}}
"
    )
}
