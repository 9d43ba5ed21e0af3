//! The configuration a proxy keeps on disk between runs: every resource
//! it applied, with its version, as one protobuf message written 0600
//! atomically ([`weft_ca::secret::write_private`]). Read back at start and
//! checked again by the proxy's validator; a file that does not decode is
//! ignored (the proxy then waits for the control plane, as without one).

use std::path::Path;

use prost::Message;
use prost_types::Any;

use crate::state::{ClientState, Held, Validator};

/// What is kept: every resource held.
#[derive(Clone, PartialEq, Message)]
struct Kept {
    #[prost(message, repeated, tag = "1")]
    resources: Vec<KeptResource>,
}

/// One resource held.
#[derive(Clone, PartialEq, Message)]
struct KeptResource {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(string, tag = "3")]
    version: String,
    #[prost(message, optional, tag = "4")]
    body: Option<Any>,
}

/// Writes what `state` holds to `file`; failures are logged (the proxy
/// keeps serving, it only loses the ability to start without the control
/// plane).
pub(crate) fn save(file: &Path, state: &ClientState) {
    let kept = Kept {
        resources: state
            .resources
            .iter()
            .flat_map(|(type_url, held)| {
                held.iter().map(move |(name, h)| KeptResource {
                    type_url: type_url.clone(),
                    name: name.clone(),
                    version: h.version.clone(),
                    body: Some(h.body.clone()),
                })
            })
            .collect(),
    };
    let written = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => weft_ca::secret::private_dir(dir),
        _ => Ok(()),
    }
    .and_then(|()| weft_ca::secret::write_private(file, &kept.encode_to_vec()));
    if let Err(e) = written {
        tracing::warn!(file = %file.display(), error = %e, "cannot keep the configuration on disk; a restart will need the control plane");
    }
}

/// What `file` holds, each resource passed through `validator` (the ones
/// it refuses are dropped and logged). Nothing when there is no file.
pub(crate) fn load(file: &Path, validator: &Validator) -> ClientState {
    let mut state = ClientState::default();
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return state,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "kept configuration unreadable; ignored");
            return state;
        }
    };
    if let Err(e) = weft_ca::secret::check_private(file) {
        tracing::warn!(file = %file.display(), error = %e, "kept configuration ignored");
        return state;
    }
    let kept = match Kept::decode(bytes.as_slice()) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "kept configuration does not decode; ignored");
            return state;
        }
    };
    for r in kept.resources {
        let Some(body) = r.body else { continue };
        if let Err(e) = validator(&r.type_url, &body) {
            tracing::warn!(file = %file.display(), name = %r.name, error = %e, "kept resource refused; dropped");
            continue;
        }
        state.resources.entry(r.type_url).or_default().insert(
            r.name,
            Held {
                version: r.version,
                body,
            },
        );
    }
    state
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn kept_state_round_trips_and_is_checked_again() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("node/config.pb");
        let mut state = ClientState::default();
        for (t, name, value) in [
            ("type/a", "x", b"1".to_vec()),
            ("type/b", "y", b"bad".to_vec()),
        ] {
            state.resources.entry(t.to_owned()).or_default().insert(
                name.to_owned(),
                Held {
                    version: "v1".into(),
                    body: Any {
                        type_url: t.to_owned(),
                        value,
                    },
                },
            );
        }
        save(&file, &state);
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let everything: Validator = Arc::new(|_, _| Ok(()));
        assert_eq!(load(&file, &everything).resources, state.resources);
        let no_bad: Validator =
            Arc::new(|_, body| (body.value != b"bad").then_some(()).ok_or("bad".into()));
        let loaded = load(&file, &no_bad);
        assert_eq!(loaded.resources.len(), 1, "the refused resource is dropped");
        // Garbage or a missing file: an empty start, no panic.
        std::fs::write(&file, b"\xff\xff\xff").expect("write");
        assert!(load(&file, &everything).resources.is_empty());
        assert!(
            load(&tmp.path().join("none"), &everything)
                .resources
                .is_empty()
        );
    }
}
