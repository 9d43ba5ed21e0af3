//! `weft certs <admin-addr>`: the certificates a weft process holds.
//! `weft certs root` and `weft certs intermediate`: the CAs of a mesh of
//! several clusters — one root kept offline, and each cluster's CA an
//! intermediate of it in Istio's plug-in layout (`docs/multicluster.md`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weft_ca::manager::CertReport;

/// Flags of `weft certs`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    /// Make CAs instead of reporting certificates.
    #[command(subcommand)]
    make: Option<Make>,
    /// Admin address of a weft process, e.g. 127.0.0.1:15000.
    #[arg(default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// CAs for a mesh of several clusters.
#[derive(clap::Subcommand, Debug)]
enum Make {
    /// Make the mesh's root CA (root-cert.pem, and root-key.pem to keep
    /// offline once the clusters' intermediates are made).
    Root {
        /// Directory to create it in (0700; an existing root is never
        /// replaced).
        #[arg(long)]
        out: PathBuf,
        /// The mesh's trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Make one cluster's CA, an intermediate of the root, in Istio's
    /// plug-in layout (ca-cert.pem, ca-key.pem, cert-chain.pem,
    /// root-cert.pem): give it to that cluster's `weft control --ca-dir`
    /// (or its `cacerts` Secret).
    Intermediate {
        /// The root's directory (from `weft certs root`).
        #[arg(long)]
        root: PathBuf,
        /// Directory to create the CA in.
        #[arg(long)]
        out: PathBuf,
        /// The cluster it is for (named in the certificate).
        #[arg(long)]
        cluster: String,
        /// The mesh's trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// How long it is valid, in days.
        #[arg(long, default_value_t = 730)]
        days: u64,
    },
}

/// Makes a CA as `make` says.
fn make(make: Make) -> ExitCode {
    let made = match &make {
        Make::Root { out, trust_domain } => {
            weft_ca::authority::create_shared_root(out, trust_domain).map(|()| {
                format!(
                    "root CA in {}: root-cert.pem, root-key.pem (keep the key offline once the intermediates are made)",
                    out.display()
                )
            })
        }
        Make::Intermediate {
            root,
            out,
            cluster,
            trust_domain,
            days,
        } => weft_ca::authority::create_intermediate(
            root,
            out,
            trust_domain,
            cluster,
            std::time::Duration::from_secs(days.saturating_mul(86400)),
        )
        .map(|()| {
            format!(
                "CA of cluster {cluster} in {}: ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem (weft control --ca-dir {})",
                out.display(),
                out.display()
            )
        }),
    };
    match made {
        Ok(what) => {
            println!("{what}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft certs: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn run(args: Args) -> ExitCode {
    if let Some(m) = args.make {
        return make(m);
    }
    let body = match super::runtime().and_then(|rt| rt.block_on(get(args.admin, "/certs"))) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("weft certs: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    let reports: Vec<CertReport> = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "weft certs: {} did not answer with certificate JSON: {e}",
                args.admin
            );
            return ExitCode::from(2);
        }
    };
    print!("{}", table(&reports));
    ExitCode::SUCCESS
}

/// GETs `path` from `addr` and returns the body.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri = format!("http://{addr}{path}");
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.get(uri.parse().map_err(|e| format!("{e}"))?),
    )
    .await
    .map_err(|_| format!("{addr} did not answer within 5s"))?
    .map_err(|e| format!("cannot reach {addr}: {e}: is a weft process's admin port there?"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer from {addr}: {e}"))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        return Err(format!("{addr}{path} answered {status}: {}", body.trim()));
    }
    Ok(body)
}

fn human(secs: Option<i64>) -> String {
    let Some(s) = secs else { return "-".into() };
    let sign = if s < 0 { "-" } else { "" };
    let s = s.unsigned_abs();
    let text = match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    };
    format!("{sign}{text}")
}

fn table(reports: &[CertReport]) -> String {
    let rows: Vec<[String; 6]> = reports
        .iter()
        .map(|r| {
            [
                r.identity.clone(),
                r.serial.clone().unwrap_or_else(|| "-".into()),
                r.not_before.clone().unwrap_or_else(|| "-".into()),
                r.not_after.clone().unwrap_or_else(|| "-".into()),
                human(r.renews_in_seconds),
                match &r.last_error {
                    Some(e) => format!(
                        "{} (last renewal failed: {e})",
                        r.issuer.clone().unwrap_or_default()
                    ),
                    None => r.issuer.clone().unwrap_or_else(|| "-".into()),
                },
            ]
        })
        .collect();
    let header = [
        "IDENTITY",
        "SERIAL",
        "NOT BEFORE",
        "NOT AFTER",
        "RENEWS IN",
        "ISSUER",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human(None), "-");
        assert_eq!(human(Some(42)), "42s");
        assert_eq!(human(Some(125)), "2m5s");
        assert_eq!(human(Some(43_199)), "11h59m");
        assert_eq!(human(Some(90_000)), "1d1h");
        assert_eq!(human(Some(-5)), "-5s");
    }
}
