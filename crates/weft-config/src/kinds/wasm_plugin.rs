//! Istio `WasmPlugin` (`extensions.istio.io/v1alpha1`): a Proxy-Wasm
//! module a waypoint or gateway runs on the requests of the Services or
//! Gateways it targets (`targetRefs`, as Istio ambient attaches it).
//! `url` is `file:///absolute/path` (on the proxy), `https://…` (fetched
//! by the proxy, `sha256` required) or `oci://registry/repo:tag`
//! (pulled by the proxy; `sha256` pins the module layer). `phase` and
//! `priority` place it among weft's phases (`AUTHN` before JWT
//! authentication, `AUTHZ` before authorization, `STATS` after it,
//! unspecified after rate limits and faults; higher priority first);
//! `failStrategy` says what a plugin that fails does to the request.
//!
//! A `file://` module the control plane can read is checked here (ABI
//! marker, exports, imports) so a broken one is refused at validation
//! with the reason; others are checked by the proxy when it loads them,
//! and a module that fails to load leaves the last good one in force.
//!
//! ```yaml
//! apiVersion: extensions.istio.io/v1alpha1
//! kind: WasmPlugin
//! metadata: {name: add-header, namespace: shop}
//! spec:
//!   targetRefs: [{kind: Service, name: reviews}]
//!   url: file:///opt/plugins/add_header.wasm
//!   phase: STATS
//!   pluginConfig: {header: x-shop, value: "1"}
//! ```

use serde::Deserialize;

use crate::diag::Ctx;
use crate::kinds::http_route::RefSpec;
use crate::resource::Spec;

/// `spec` of a `WasmPlugin`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WasmPluginSpec {
    /// The Services and Gateways whose requests it sees.
    #[serde(default)]
    pub target_refs: Vec<RefSpec>,
    /// One target (older form).
    pub target_ref: Option<RefSpec>,
    /// Where the module is: `file://`, `https://` or `oci://`.
    #[serde(default)]
    pub url: String,
    /// The module's SHA-256, hex (required for `https://`).
    pub sha256: Option<String>,
    /// `IfNotPresent` (default) or `Always`: accepted; weft fetches a
    /// module again only when `url` or `sha256` change.
    pub image_pull_policy: Option<String>,
    /// `AUTHN`, `AUTHZ`, `STATS` or `UNSPECIFIED_PHASE` (default).
    pub phase: Option<String>,
    /// Order within the phase: higher first (default 0).
    pub priority: Option<i64>,
    /// The root id the plugin's code may look for.
    pub plugin_name: Option<String>,
    /// Handed to the plugin as JSON (`proxy_on_configure`).
    pub plugin_config: Option<serde_json::Value>,
    /// `FAIL_CLOSE` (default: a failing plugin fails the request with
    /// 503) or `FAIL_OPEN` (the request goes on without it).
    pub fail_strategy: Option<String>,
    /// The VM's environment.
    pub vm_config: Option<VmConfigSpec>,
    /// Which traffic: ports of the target (empty: all).
    #[serde(rename = "match", default)]
    pub matches: Vec<TrafficSelectorSpec>,
    /// `HTTP` (default); `NETWORK` plugins are not run.
    #[serde(rename = "type")]
    pub plugin_type: Option<String>,
}

/// `vmConfig`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct VmConfigSpec {
    /// Environment variables.
    #[serde(default)]
    pub env: Vec<EnvVarSpec>,
}

/// `vmConfig.env[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSpec {
    /// Its name.
    pub name: String,
    /// Its value (`INLINE`) or the proxy's variable to copy (`HOST`).
    #[serde(default)]
    pub value: String,
    /// `INLINE` (default) or `HOST`.
    pub value_from: Option<String>,
}

/// `match[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct TrafficSelectorSpec {
    /// `UNDEFINED`, `CLIENT`, `SERVER` or `CLIENT_AND_SERVER`.
    pub mode: Option<String>,
    /// Ports of the target.
    #[serde(default)]
    pub ports: Vec<PortSelectorSpec>,
}

/// `match[].ports[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PortSelectorSpec {
    /// The port.
    pub number: u32,
}

impl WasmPluginSpec {
    /// Every target, with the field that names it.
    pub fn targets(&self) -> impl Iterator<Item = (String, &RefSpec)> {
        let single = self
            .target_ref
            .iter()
            .map(|t| ("spec.targetRef".to_owned(), t));
        let many = self
            .target_refs
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("spec.targetRefs[{i}]"), t));
        single.chain(many)
    }
}

/// What `url` says where the module is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource<'a> {
    /// A file on the proxy (absolute path).
    File(&'a str),
    /// Fetched over HTTPS.
    Https(&'a str),
    /// Pulled from an OCI registry.
    Oci(&'a str),
}

/// Where `url` points, or why it cannot be used.
pub fn module_source(url: &str) -> Result<ModuleSource<'_>, String> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(format!(
                "{url:?}: file:// takes an absolute path (file:///opt/plugins/p.wasm)"
            ));
        }
        return Ok(ModuleSource::File(path));
    }
    if url.starts_with("https://") {
        let parsed: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if parsed.host().is_none() {
            return Err(format!("{url:?} has no host"));
        }
        return Ok(ModuleSource::Https(url));
    }
    if let Some(reference) = url.strip_prefix("oci://") {
        if !reference.contains('/') {
            return Err(format!(
                "{url:?}: an OCI reference names a registry and a repository (oci://registry/repo:tag)"
            ));
        }
        return Ok(ModuleSource::Oci(reference));
    }
    if url.starts_with("http://") {
        return Err(format!(
            "{url:?}: modules are fetched over https:// (with sha256), not plain http"
        ));
    }
    Err(format!(
        "{url:?}: use file:///path, https://… (with sha256) or oci://registry/repo:tag"
    ))
}

impl Spec for WasmPluginSpec {
    const KIND: &'static str = "WasmPlugin";
    const UNSUPPORTED: &'static [(&'static str, &'static str)] = &[
        (
            "spec.selector",
            "attach with targetRefs (a Service or a Gateway), as Istio ambient does",
        ),
        (
            "spec.imagePullSecret",
            "registries that need credentials are not supported yet; use a public registry, https:// or file://",
        ),
        (
            "spec.verificationKey",
            "signature verification is not supported; pin the module with sha256",
        ),
    ];

    fn validate(&self, ctx: &mut Ctx<'_>) {
        if self.target_ref.is_none() && self.target_refs.is_empty() {
            ctx.error(
                "spec.targetRefs",
                "name the Services or Gateways whose requests the plugin sees",
            );
        }
        for (field, target) in self.targets() {
            let kind = target.kind.as_deref().unwrap_or("Service");
            if !matches!(kind, "Service" | "ServiceEntry" | "Gateway") {
                ctx.error(
                    &format!("{field}.kind"),
                    format!("{kind:?}: a plugin attaches to a Service, ServiceEntry or Gateway"),
                );
            }
        }
        let source = if self.url.is_empty() {
            ctx.error("spec.url", "required: where the module is");
            None
        } else {
            match module_source(&self.url) {
                Ok(s) => Some(s),
                Err(e) => {
                    ctx.error("spec.url", e);
                    None
                }
            }
        };
        match self.sha256.as_deref() {
            Some(h) if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) => ctx.error(
                "spec.sha256",
                format!("{h:?} is not a SHA-256 (64 hex digits)"),
            ),
            None if matches!(source, Some(ModuleSource::Https(_))) => ctx.error(
                "spec.sha256",
                "required for https:// modules: the proxy runs only the module it names",
            ),
            _ => {}
        }
        if let Some(ModuleSource::File(path)) = source {
            check_file(path, self.sha256.as_deref(), ctx);
        }
        if let Some(p) = &self.phase
            && !matches!(
                p.as_str(),
                "AUTHN" | "AUTHZ" | "STATS" | "UNSPECIFIED_PHASE"
            )
        {
            ctx.error(
                "spec.phase",
                format!("{p:?}: one of AUTHN, AUTHZ, STATS, UNSPECIFIED_PHASE"),
            );
        }
        if let Some(f) = &self.fail_strategy
            && !matches!(f.as_str(), "FAIL_CLOSE" | "FAIL_OPEN")
        {
            ctx.error(
                "spec.failStrategy",
                format!("{f:?}: FAIL_CLOSE (the default) or FAIL_OPEN"),
            );
        }
        if let Some(p) = &self.image_pull_policy
            && !matches!(p.as_str(), "IfNotPresent" | "Always" | "UNSPECIFIED_POLICY")
        {
            ctx.error(
                "spec.imagePullPolicy",
                format!("{p:?}: IfNotPresent or Always"),
            );
        }
        if let Some(t) = &self.plugin_type
            && t != "HTTP"
        {
            ctx.error(
                "spec.type",
                format!("{t:?}: weft runs HTTP plugins (NETWORK plugins are not supported)"),
            );
        }
        for (i, env) in self.vm_config.iter().flat_map(|v| v.env.iter()).enumerate() {
            let base = format!("spec.vmConfig.env[{i}]");
            if env.name.is_empty() {
                ctx.error(&format!("{base}.name"), "required");
            }
            if let Some(from) = &env.value_from
                && !matches!(from.as_str(), "INLINE" | "HOST")
            {
                ctx.error(
                    &format!("{base}.valueFrom"),
                    format!("{from:?}: INLINE or HOST"),
                );
            }
        }
        for (i, m) in self.matches.iter().enumerate() {
            if let Some(mode) = &m.mode
                && !matches!(
                    mode.as_str(),
                    "UNDEFINED" | "SERVER" | "CLIENT_AND_SERVER" | "CLIENT"
                )
            {
                ctx.error(
                    &format!("spec.match[{i}].mode"),
                    format!("{mode:?}: UNDEFINED, CLIENT, SERVER or CLIENT_AND_SERVER"),
                );
            }
            for (j, p) in m.ports.iter().enumerate() {
                if p.number == 0 || p.number > 65535 {
                    ctx.error(
                        &format!("spec.match[{i}].ports[{j}].number"),
                        format!("{} is not a port", p.number),
                    );
                }
            }
        }
    }
}

/// Checks a `file://` module the control plane can read: its digest
/// when `sha256` pins it, and that it is a plugin weft runs. A file that
/// is not here may be on the proxy: a warning says the proxy checks it.
fn check_file(path: &str, sha256: Option<&str>, ctx: &mut Ctx<'_>) {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            ctx.warn(
                "spec.url",
                format!(
                    "{path}: {e} here; the proxy reads it from its own file system and refuses it there if it is not a plugin"
                ),
            );
            return;
        }
    };
    if let Some(want) = sha256 {
        let got = weft_wasm::sha256_hex(&bytes);
        if !got.eq_ignore_ascii_case(want) {
            ctx.error(
                "spec.sha256",
                format!("{path} has SHA-256 {got}, not {want}"),
            );
            return;
        }
    }
    if let Err(e) = weft_wasm::check(path, &bytes) {
        ctx.error("spec.url", e.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_sources() {
        let table: &[(&str, Result<ModuleSource<'_>, &str>)] = &[
            ("file:///opt/p.wasm", Ok(ModuleSource::File("/opt/p.wasm"))),
            ("file://p.wasm", Err("absolute path")),
            (
                "https://example.com/p.wasm",
                Ok(ModuleSource::Https("https://example.com/p.wasm")),
            ),
            ("http://example.com/p.wasm", Err("not plain http")),
            (
                "oci://localhost:5000/plugins/p:v1",
                Ok(ModuleSource::Oci("localhost:5000/plugins/p:v1")),
            ),
            ("oci://p", Err("registry and a repository")),
            ("ftp://x", Err("use file:///path")),
        ];
        for (url, want) in table {
            match (module_source(url), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{url}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{url}: {got}"),
                (got, want) => panic!("{url}: {got:?}, wanted {want:?}"),
            }
        }
    }
}
