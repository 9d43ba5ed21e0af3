//! The metrics of extensions: plugin failures and load errors by plugin,
//! external processor errors, and — read at each scrape — the metrics
//! plugins define themselves (`proxy_define_metric`), as
//! `weft_wasm_<name>` with a `plugin` label.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use weft_wasm::abi::MetricType;

/// Labels of a plugin's failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The `WasmPlugin`, `namespace/name`.
    pub plugin: String,
    /// `trap`, `cpu_limit`, `start`, `failed_instance`, `load`.
    pub kind: &'static str,
}

/// Labels of an external processor's failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessorLabels {
    /// The processor's policy, `namespace/name`.
    pub policy: String,
    /// What the failure mode did: `allowed` or `denied`.
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

/// Plugins whose own metrics are exported: name and what its instances
/// share.
type Exported = Arc<Mutex<Vec<(String, weft_wasm::SharedRef)>>>;

/// Extension metrics, registered with the proxy's others.
#[derive(Clone, Debug, Default)]
pub struct ExtensionMetrics {
    failures: Family<FailureLabels, Counter>,
    processor_errors: Family<ProcessorLabels, Counter>,
    exported: Exported,
}

impl ExtensionMetrics {
    /// Registers the families and the collector of plugins' metrics.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weft_wasm_plugin_failures",
            "Proxy-Wasm plugin failures (trap, CPU limit, start, load), each handled by the plugin's failStrategy",
            self.failures.clone(),
        );
        registry.register(
            "weft_ext_proc_errors",
            "External processor calls that failed (unreachable, timeout, protocol), by what the failure mode did",
            self.processor_errors.clone(),
        );
        registry.register_collector(Box::new(PluginMetrics(self.exported.clone())));
    }

    /// Counts a failure of `plugin`.
    pub fn failure(&self, plugin: &str, kind: &'static str) {
        self.failures
            .get_or_create(&FailureLabels {
                plugin: plugin.to_owned(),
                kind,
            })
            .inc();
    }

    /// Failures of `plugin` of `kind` so far.
    pub fn failures(&self, plugin: &str, kind: &'static str) -> u64 {
        self.failures
            .get_or_create(&FailureLabels {
                plugin: plugin.to_owned(),
                kind,
            })
            .get()
    }

    /// Counts an external processor failure.
    pub fn processor_error(&self, policy: &str, decision: &'static str) {
        self.processor_errors
            .get_or_create(&ProcessorLabels {
                policy: policy.to_owned(),
                decision,
            })
            .inc();
    }

    /// The plugins whose metrics are exported from now on.
    pub fn export(&self, plugins: Vec<(String, weft_wasm::SharedRef)>) {
        *self.exported.lock().unwrap_or_else(|p| p.into_inner()) = plugins;
    }
}

/// A plugin metric's exported name: `weft_wasm_` and its name with every
/// character Prometheus does not allow made `_`.
pub fn exported_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("weft_wasm_{cleaned}")
}

#[derive(Debug)]
struct PluginMetrics(Exported);

impl Collector for PluginMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // One family per name, a series per plugin defining it.
        let mut families: BTreeMap<String, (MetricType, Vec<(String, i64)>)> = BTreeMap::new();
        for (plugin, shared) in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            for m in shared.metrics() {
                let entry = families
                    .entry(exported_name(&m.name))
                    .or_insert((m.kind, Vec::new()));
                if entry.0 == m.kind {
                    entry.1.push((plugin.clone(), m.value));
                }
            }
        }
        for (name, (kind, series)) in families {
            let counter = kind == MetricType::Counter;
            let family_type = if counter {
                prometheus_client::metrics::MetricType::Counter
            } else {
                prometheus_client::metrics::MetricType::Gauge
            };
            let mut family = encoder.encode_descriptor(
                &name,
                "Defined by a Proxy-Wasm plugin",
                None,
                family_type,
            )?;
            for (plugin, value) in series {
                let labels = PluginLabel { plugin };
                let metric = family.encode_family(&labels)?;
                if counter {
                    ConstCounter::new(value.max(0) as u64).encode(metric)?;
                } else {
                    ConstGauge::new(value).encode(metric)?;
                }
            }
        }
        Ok(())
    }
}
