//! The redirect rules inside a captured workload's network namespace
//! (nftables table `ip weft` / `ip6 weft`), shared by `weft run` and the
//! CNI plugin: HBONE (15008) arriving on the pod's interface is left for
//! the node agent's listener; any other inbound TCP goes to 15006
//! (plaintext inbound); outbound TCP, except to loopback and the pod's
//! own address, goes to 15001 — but the node agent's own tunnels, opened
//! inside the pod and marked 0x539 (as ztunnel marks them), leave as
//! they are, so they carry the pod's address. Written with `nft -f -` inside the
//! namespace (`nsenter --net=<path>`), so nothing on the host changes.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// The table's family for an address.
fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "ip" } else { "ip6" }
}

/// The rules for a workload at `ip` whose interface is `interface`.
pub fn text(ip: IpAddr, interface: &str) -> String {
    let family = family(ip);
    let loopback = if ip.is_ipv4() { "127.0.0.0/8" } else { "::1" };
    format!(
        "table {family} weft {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"{interface}\" tcp dport 15008 accept
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

/// Runs `nft args` inside the namespace at `netns` (a path), with `stdin`.
fn nft(netns: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .arg("nft")
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
    let _ = nft(netns, &["delete", "table", family(ip), "weft"], None);
    nft(netns, &["-f", "-"], Some(&text(ip, interface))).map_err(error)?;
    Ok(())
}

/// Removes them (both families); a namespace or table already gone is
/// not an error.
pub fn remove(netns: &str) {
    for family in ["ip", "ip6"] {
        let _ = nft(netns, &["delete", "table", family, "weft"], None);
    }
}

/// Whether the rules are in place for `ip` (the table exists with its
/// redirects).
pub fn check(netns: &str, ip: IpAddr) -> Result<(), RulesError> {
    let listed =
        nft(netns, &["list", "table", family(ip), "weft"], None).map_err(|why| RulesError {
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
            r.find("meta mark 0x539 accept") < r.find("redirect to :15001"),
            "the agent's own tunnels pass first: {r}"
        );
        let v6 = text("fd00::5".parse().expect("ip"), "net1");
        assert!(v6.starts_with("table ip6 weft"), "{v6}");
        assert!(v6.contains("ip6 daddr { ::1, fd00::5 } accept"), "{v6}");
        assert!(v6.contains("iifname \"net1\""), "{v6}");
    }
}
