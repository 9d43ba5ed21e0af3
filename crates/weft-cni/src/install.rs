//! Putting the plugin on a node, as Istio's CNI agent does: the running
//! `weft` binary copied into the CNI bin directory as `weft-cni`, and
//! `weft-cni` appended to the chain of the node's CNI configuration (the
//! first file of the configuration directory, in the order the runtime
//! reads them; a single-plugin `.conf` becomes a `.conflist`). Both
//! written atomically; a chain that already has it is left as it is. The
//! entry stays when the agent stops: a pod created while no agent runs
//! fails to start (and is retried) rather than start outside the mesh.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// Where the plugin reaches its agent and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSettings {
    /// The agent's attach socket.
    pub attach_socket: PathBuf,
    /// The plugin's log file.
    pub log_file: PathBuf,
    /// Namespaces whose pods are never handed to the agent.
    pub exclude_namespaces: Vec<String>,
}

/// Why the plugin could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file could not be read or written.
    #[error("CNI install: {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No CNI configuration to chain into (the network plugin has not
    /// written one yet).
    #[error(
        "CNI install: no network configuration in {0} to chain weft-cni into (is the cluster's network plugin installed?)"
    )]
    NoConfiguration(PathBuf),
    /// The configuration is not one the plugin can be chained into.
    #[error("CNI install: {path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// The configuration list with `weft-cni` last in its chain with these
/// settings; `None` when it is there already as it should be (an entry
/// with other settings, from an earlier version, is replaced in place).
/// A single-plugin configuration (`.conf`, with a `type` and no
/// `plugins`) becomes a list.
pub fn chained(conf: &Value, settings: &PluginSettings) -> Result<Option<Value>, String> {
    let mut list = if conf.get("plugins").is_some() {
        conf.clone()
    } else if conf.get("type").is_some() {
        let mut single = conf.clone();
        let object = single
            .as_object_mut()
            .ok_or("the configuration is not a JSON object")?;
        let version = object.remove("cniVersion").unwrap_or(json!("1.0.0"));
        let name = object.remove("name").unwrap_or(json!("k8s-pod-network"));
        json!({"cniVersion": version, "name": name, "plugins": [single]})
    } else {
        return Err("neither a configuration list (plugins) nor a plugin (type)".into());
    };
    let plugins = list["plugins"]
        .as_array_mut()
        .ok_or("plugins is not a list")?;
    let entry = json!({
        "type": "weft-cni",
        "attachSocket": settings.attach_socket,
        "logFile": settings.log_file,
        "excludeNamespaces": settings.exclude_namespaces,
    });
    match plugins.iter_mut().find(|p| p["type"] == "weft-cni") {
        Some(present) if *present == entry => return Ok(None),
        Some(present) => *present = entry,
        None => plugins.push(entry),
    }
    Ok(Some(list))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("weft-tmp");
    std::fs::write(&tmp, contents).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Copies `binary` to `<bin_dir>/weft-cni` and chains the plugin into the
/// first configuration of `conf_dir`. Returns the configuration file
/// written (or found already chained).
pub fn install(
    binary: &Path,
    bin_dir: &Path,
    conf_dir: &Path,
    settings: &PluginSettings,
) -> Result<PathBuf, InstallError> {
    let bytes = std::fs::read(binary).map_err(io(binary))?;
    write_atomically(&bin_dir.join("weft-cni"), &bytes, 0o755)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .map_err(io(conf_dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
        })
        .collect();
    files.sort();
    let first = files
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoConfiguration(conf_dir.to_owned()))?;
    let text = std::fs::read_to_string(&first).map_err(io(&first))?;
    let conf: Value = serde_json::from_str(&text).map_err(|e| InstallError::Invalid {
        path: first.clone(),
        why: e.to_string(),
    })?;
    let chained = chained(&conf, settings).map_err(|why| InstallError::Invalid {
        path: first.clone(),
        why,
    })?;
    let Some(list) = chained else {
        return Ok(first);
    };
    let target = first.with_extension("conflist");
    let text = serde_json::to_string_pretty(&list).unwrap_or_default();
    write_atomically(&target, text.as_bytes(), 0o644)?;
    if target != first {
        std::fs::remove_file(&first).map_err(io(&first))?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PluginSettings {
        PluginSettings {
            attach_socket: "/var/run/weft/attach.sock".into(),
            log_file: "/var/run/weft/cni.log".into(),
            exclude_namespaces: vec!["kube-system".into(), "weft-system".into()],
        }
    }

    #[test]
    fn the_plugin_goes_last_in_the_chain_once() {
        let list = json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": [
            {"type": "bridge"}, {"type": "portmap"}]});
        let out = chained(&list, &settings()).expect("ok").expect("changed");
        let types: Vec<&str> = out["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .filter_map(|p| p["type"].as_str())
            .collect();
        assert_eq!(types, ["bridge", "portmap", "weft-cni"]);
        assert_eq!(
            out["plugins"][2]["attachSocket"],
            "/var/run/weft/attach.sock"
        );
        assert_eq!(chained(&out, &settings()).expect("ok"), None, "once");
        // Other settings (an upgrade) replace the entry where it is.
        let mut other = settings();
        other.exclude_namespaces = vec!["mesh-system".into()];
        let updated = chained(&out, &other).expect("ok").expect("changed");
        assert_eq!(updated["plugins"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            updated["plugins"][2]["excludeNamespaces"],
            json!(["mesh-system"])
        );
        // A single plugin becomes a list with its version and name.
        let single = json!({"cniVersion": "0.4.0", "name": "calico", "type": "calico"});
        let out = chained(&single, &settings()).expect("ok").expect("changed");
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(out["name"], "calico");
        assert_eq!(out["plugins"][0]["type"], "calico");
        assert!(out["plugins"][0].get("cniVersion").is_none());
        assert!(chained(&json!({"x": 1}), &settings()).is_err());
    }

    #[test]
    fn install_copies_the_binary_and_rewrites_the_first_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
        std::fs::create_dir_all(&bin).expect("bin");
        std::fs::create_dir_all(&conf).expect("conf");
        let binary = dir.path().join("weft");
        std::fs::write(&binary, b"\x7fELF not really").expect("binary");
        assert!(matches!(
            install(&binary, &bin, &conf, &settings()),
            Err(InstallError::NoConfiguration(_))
        ));
        std::fs::write(
            conf.join("10-calico.conf"),
            r#"{"cniVersion":"0.3.1","name":"k8s","type":"calico"}"#,
        )
        .expect("conf");
        std::fs::write(
            conf.join("99-other.conflist"),
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}"#,
        )
        .expect("other");
        let written = install(&binary, &bin, &conf, &settings()).expect("install");
        assert_eq!(written, conf.join("10-calico.conflist"));
        assert!(
            !conf.join("10-calico.conf").exists(),
            "replaced by the list"
        );
        let list: Value =
            serde_json::from_str(&std::fs::read_to_string(&written).expect("read")).expect("json");
        assert_eq!(list["plugins"][1]["type"], "weft-cni");
        assert_eq!(
            std::fs::read(bin.join("weft-cni")).expect("copied"),
            b"\x7fELF not really"
        );
        let other = std::fs::read_to_string(conf.join("99-other.conflist")).expect("other");
        assert!(!other.contains("weft-cni"), "only the first is chained");
        // Again: nothing changes.
        assert_eq!(
            install(&binary, &bin, &conf, &settings()).expect("again"),
            written
        );
    }
}
