//! The redirect rules inside a captured workload's network namespace
//! (nftables table `ip weft` / `ip6 weft`), shared by `weft run` and the
//! CNI plugin: HBONE (15008) arriving on the pod's interface is left for
//! the node agent's listener; any other inbound TCP goes to 15006
//! (plaintext inbound); outbound TCP, except to loopback and the pod's
//! own address, goes to 15001 — but the node agent's own tunnels, opened
//! inside the pod and marked 0x539 (as ztunnel marks them), leave as
//! they are, so they carry the pod's address. Written with `nft -f -` inside the
//! namespace (`nsenter --net=<path>`).
//!
//! The kubelet's probes come from the node itself and speak plaintext: as
//! Istio does, the node agent source-NATs connections that processes on
//! the host open to captured pods to [`PROBE_SOURCE`] (table `ip
//! weft-host` in the host's namespace, [`host_table`]; only packets with
//! a local socket, never forwarded ones), and the pod's rules let that
//! source through untouched.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// The table's family for an address.
fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "ip" } else { "ip6" }
}

/// The source the host's own connections to captured pods (the kubelet's
/// probes) carry: Istio's address for the same purpose.
pub const PROBE_SOURCE: &str = "169.254.7.127";
/// The same for IPv6 pods (Istio's).
pub const PROBE_SOURCE_V6: &str = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff";

/// The rules for a workload at `ip` whose interface is `interface`.
pub fn text(ip: IpAddr, interface: &str) -> String {
    let family = family(ip);
    let loopback = if ip.is_ipv4() { "127.0.0.0/8" } else { "::1" };
    let probes = if ip.is_ipv4() {
        PROBE_SOURCE
    } else {
        PROBE_SOURCE_V6
    };
    format!(
        "table {family} weft {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"{interface}\" tcp dport 15008 accept
    iifname \"{interface}\" {family} saddr {probes} accept
    iifname \"{interface}\" meta l4proto tcp redirect to :15006
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    meta mark 0x539 accept
    oifname \"lo\" accept
    {family} daddr {{ {loopback}, {ip} }} accept
    meta l4proto tcp redirect to :15001
  }}
}}
"
    )
}

/// Why the rules could not be written, removed or found.
#[derive(Debug, thiserror::Error)]
#[error("{what} in network namespace {netns}: {why}")]
pub struct RulesError {
    what: &'static str,
    netns: String,
    why: String,
}

/// Where `nft` runs.
#[derive(Clone, Copy)]
enum At<'a> {
    /// This process's own namespace (the host's, for the node agent).
    Host,
    /// The namespace at this path.
    Netns(&'a str),
}

/// Runs `nft args` at `at`, with `stdin`.
fn nft(at: At<'_>, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut command = match at {
        At::Host => Command::new("nft"),
        At::Netns(netns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={netns}")).arg("nft");
            c
        }
    };
    let mut child = command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nsenter/nft: {e} (install util-linux and nftables)"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`nft {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Writes the rules (replacing a table left by an earlier `ADD`).
pub fn install(netns: &str, ip: IpAddr, interface: &str) -> Result<(), RulesError> {
    let error = |why| RulesError {
        what: "cannot write the redirect rules",
        netns: netns.to_owned(),
        why,
    };
    let _ = nft(
        At::Netns(netns),
        &["delete", "table", family(ip), "weft"],
        None,
    );
    nft(At::Netns(netns), &["-f", "-"], Some(&text(ip, interface))).map_err(error)?;
    Ok(())
}

/// Removes them (both families); a namespace or table already gone is
/// not an error.
pub fn remove(netns: &str) {
    for family in ["ip", "ip6"] {
        let _ = nft(At::Netns(netns), &["delete", "table", family, "weft"], None);
    }
}

/// Whether the rules are in place for `ip` (the table exists with its
/// redirects).
pub fn check(netns: &str, ip: IpAddr) -> Result<(), RulesError> {
    let listed = nft(
        At::Netns(netns),
        &["list", "table", family(ip), "weft"],
        None,
    )
    .map_err(|why| RulesError {
        what: "the redirect rules are missing",
        netns: netns.to_owned(),
        why,
    })?;
    if listed.contains("redirect to :15001") && listed.contains("redirect to :15006") {
        Ok(())
    } else {
        Err(RulesError {
            what: "the redirect rules are incomplete",
            netns: netns.to_owned(),
            why: listed,
        })
    }
}

/// The host's table (`ip weft-host`): connections that local processes
/// open to the addresses in its set `pods` leave with [`PROBE_SOURCE`].
/// Made once and shared by every agent of the host; never removed (its
/// set empties as pods are released).
fn host_table() -> String {
    format!(
        "table ip weft-host {{
  set pods {{ type ipv4_addr; }}
  chain postrouting {{
    type nat hook postrouting priority srcnat - 1; policy accept;
    ip daddr @pods meta skuid >= 0 snat ip to {PROBE_SOURCE}
  }}
}}
"
    )
}

/// Makes the host's table if it is not there yet (run in the host's
/// namespace, by the node agent).
pub fn host_table_ensure() -> Result<(), RulesError> {
    if nft(
        At::Host,
        &["list", "chain", "ip", "weft-host", "postrouting"],
        None,
    )
    .is_ok()
    {
        return Ok(());
    }
    nft(At::Host, &["-f", "-"], Some(&host_table())).map_err(|why| RulesError {
        what: "cannot write the probe rules",
        netns: "of the host".into(),
        why,
    })?;
    Ok(())
}

/// Lets the host's own connections to a captured pod at `ip` through as
/// probes (IPv4; an IPv6 pod's probes are not translated yet).
pub fn host_allow(ip: IpAddr) -> Result<(), RulesError> {
    if ip.is_ipv6() {
        return Ok(());
    }
    let element = format!("{{ {ip} }}");
    nft(
        At::Host,
        &["add", "element", "ip", "weft-host", "pods", &element],
        None,
    )
    .map_err(|why| RulesError {
        what: "cannot let probes through",
        netns: "of the host".into(),
        why,
    })?;
    Ok(())
}

/// Forgets a released pod's address (gone already is fine).
pub fn host_forget(ip: IpAddr) {
    let element = format!("{{ {ip} }}");
    let _ = nft(
        At::Host,
        &["delete", "element", "ip", "weft-host", "pods", &element],
        None,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_skip_hbone_and_local_traffic_and_redirect_the_rest() {
        let r = text("10.0.0.5".parse().expect("ip"), "eth0");
        assert!(r.starts_with("table ip weft"), "{r}");
        assert!(r.contains("iifname \"eth0\" tcp dport 15008 accept"), "{r}");
        assert!(
            r.contains("ip daddr { 127.0.0.0/8, 10.0.0.5 } accept"),
            "{r}"
        );
        assert!(r.contains("redirect to :15001"), "{r}");
        assert!(r.contains("redirect to :15006"), "{r}");
        assert!(
            r.find("ip saddr 169.254.7.127 accept") < r.find("redirect to :15006"),
            "probes pass before inbound plaintext is redirected: {r}"
        );
        assert!(host_table().contains("meta skuid >= 0 snat ip to 169.254.7.127"));
        assert!(
            r.find("meta mark 0x539 accept") < r.find("redirect to :15001"),
            "the agent's own tunnels pass first: {r}"
        );
        let v6 = text("fd00::5".parse().expect("ip"), "net1");
        assert!(v6.starts_with("table ip6 weft"), "{v6}");
        assert!(v6.contains("ip6 daddr { ::1, fd00::5 } accept"), "{v6}");
        assert!(v6.contains("iifname \"net1\""), "{v6}");
    }
}
