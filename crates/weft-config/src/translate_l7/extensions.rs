//! Extensions → the L7 policy of their targets: each `WasmPlugin` becomes
//! a [`WasmPlugin`], each `ExtProcPolicy` an [`ExtProc`], on every Service
//! or Gateway it names (a target that is not there is reported with its
//! field).

use weft_core::l7::{BodyMode, ExtProc, PluginPhase, WasmPlugin};
use weft_core::model::Snapshot;

use crate::diag::Diagnostic;
use crate::kinds::{ExtProcPolicySpec, Resources, WasmPluginSpec};
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

/// Envoy's default `message_timeout`.
const MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// The model's form of an `ExtProcPolicy`.
fn processor(p: &Resource<ExtProcPolicySpec>) -> ExtProc {
    let mode = &p.spec.processing_mode;
    let send = |v: &Option<String>, default: bool| match v.as_deref() {
        Some("SEND") => true,
        Some("SKIP") => false,
        _ => default,
    };
    let body = |v: &Option<String>| match v.as_deref() {
        Some("STREAMED") => BodyMode::Streamed,
        Some("BUFFERED") => BodyMode::Buffered,
        _ => BodyMode::None,
    };
    ExtProc {
        name: p.name.to_string(),
        address: p.spec.address.clone(),
        request_headers: send(&mode.request_headers, true),
        response_headers: send(&mode.response_headers, true),
        request_body: body(&mode.request_body),
        response_body: body(&mode.response_body),
        request_trailers: send(&mode.request_trailers, false),
        response_trailers: send(&mode.response_trailers, false),
        message_timeout: super::common::parse_duration(p.spec.message_timeout.as_deref())
            .unwrap_or(MESSAGE_TIMEOUT),
        fail_open: p.spec.fail_open,
        allow_mode_override: p.spec.allow_mode_override,
        listeners: Vec::new(),
    }
}

/// `ExtProcPolicy` → the processors of its targets, in name order.
pub(crate) fn translate_ext_procs(
    r: &Resources,
    snapshot: &mut Snapshot,
    out: &mut Vec<Diagnostic>,
) {
    let mut all: Vec<&Resource<ExtProcPolicySpec>> =
        r.ext_proc_policies.iter().map(|p| p.as_ref()).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    for p in all {
        let model = processor(p);
        for (i, target) in p.spec.target_refs.iter().enumerate() {
            let listener = target.section_name.clone().filter(|_| target.is_gateway());
            match attach_point(snapshot, &p.name.namespace, target) {
                Ok(policy) => match policy.ext_proc.iter_mut().find(|e| e.name == model.name) {
                    // Another listener of a Gateway already named.
                    Some(held) => {
                        if held.listeners.is_empty() || listener.is_none() {
                            held.listeners.clear();
                        } else {
                            held.listeners.extend(listener);
                        }
                    }
                    None => policy.ext_proc.push(ExtProc {
                        listeners: listener.into_iter().collect(),
                        ..model.clone()
                    }),
                },
                Err(e) => report(out, p, &format!("spec.targetRefs[{i}].name"), e),
            }
        }
    }
}
