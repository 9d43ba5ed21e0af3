//! Extensions → the L7 policy of their targets: each `WasmPlugin` becomes
//! a [`WasmPlugin`] on every Service or Gateway it names (a target that
//! is not there is reported with its field).

use weft_core::l7::{PluginPhase, WasmPlugin};
use weft_core::model::Snapshot;

use crate::diag::Diagnostic;
use crate::kinds::{Resources, WasmPluginSpec};
use crate::resource::Resource;

use super::common::{attach_point, report};

/// The model's form of a `WasmPlugin`.
fn plugin(p: &Resource<WasmPluginSpec>) -> WasmPlugin {
    let spec = &p.spec;
    let env = spec.vm_config.iter().flat_map(|v| v.env.iter());
    WasmPlugin {
        name: p.name.to_string(),
        url: spec.url.clone(),
        sha256: spec.sha256.as_ref().map(|h| h.to_ascii_lowercase()),
        plugin_name: spec
            .plugin_name
            .clone()
            .unwrap_or_else(|| p.name.name.clone()),
        phase: match spec.phase.as_deref() {
            Some("AUTHN") => PluginPhase::Authn,
            Some("AUTHZ") => PluginPhase::Authz,
            Some("STATS") => PluginPhase::Stats,
            _ => PluginPhase::Unspecified,
        },
        priority: spec.priority.unwrap_or(0),
        fail_open: spec.fail_strategy.as_deref() == Some("FAIL_OPEN"),
        config: spec
            .plugin_config
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        env: env
            .clone()
            .filter(|e| e.value_from.as_deref() != Some("HOST"))
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        host_env: env
            .filter(|e| e.value_from.as_deref() == Some("HOST"))
            .map(|e| e.name.clone())
            .collect(),
        ports: spec
            .matches
            .iter()
            .flat_map(|m| m.ports.iter())
            .filter_map(|p| u16::try_from(p.number).ok())
            .collect(),
    }
}

/// `WasmPlugin` → the plugins of its targets.
pub(crate) fn translate_wasm_plugins(
    r: &Resources,
    snapshot: &mut Snapshot,
    out: &mut Vec<Diagnostic>,
) {
    let mut all: Vec<&Resource<WasmPluginSpec>> =
        r.wasm_plugins.iter().map(|p| p.as_ref()).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    for p in all {
        let model = plugin(p);
        for (field, target) in p.spec.targets() {
            match attach_point(snapshot, &p.name.namespace, target) {
                Ok(policy) => policy.wasm.push(model.clone()),
                Err(e) => report(out, p, &format!("{field}.name"), e),
            }
        }
    }
}
