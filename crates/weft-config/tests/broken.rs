//! A directory of deliberately broken files yields every expected problem,
//! each with file, document, line, object and field path.

use std::path::Path;

use weft_config::{LoadError, load_path};

fn data(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

#[test]
fn broken_directory_lists_every_problem() {
    let dir = data("broken");
    let problems = match load_path(&dir) {
        Err(LoadError::Invalid(p)) => p,
        other => panic!("expected problems, got {other:?}"),
    };
    let prefix = format!("{}/", dir.display());
    let got: Vec<String> = problems
        .iter()
        .map(|d| d.to_string().replace(&prefix, ""))
        .collect();
    let expected: Vec<&str> = include_str!("data/broken.expected").lines().collect();
    assert_eq!(got, expected);
}

#[test]
fn unreadable_path_is_a_read_error() {
    let err = load_path(&data("no-such-dir")).expect_err("missing");
    match err {
        LoadError::Read(e) => {
            let msg = e.to_string();
            assert!(msg.contains("no-such-dir"), "{msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn demo_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    let config = load_path(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.snapshot.services.len(), 4);
    assert_eq!(config.snapshot.workloads.len(), 9);
    // reviews goes through the waypoint shop-waypoint.
    let reviews = config
        .snapshot
        .services
        .values()
        .find(|s| s.name.name == "reviews")
        .expect("reviews");
    assert_eq!(
        reviews.waypoint.as_ref().map(ToString::to_string),
        Some("shop/shop-waypoint".to_owned())
    );
    assert!(
        config
            .snapshot
            .workloads
            .values()
            .any(|w| w.waypoint && w.name.name == "shop-waypoint")
    );
}
