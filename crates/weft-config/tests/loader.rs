//! Reloading a directory parses only what changed, yet every check sees the
//! whole configuration.

use std::sync::Arc;

use weft_config::{LoadError, Loader};

const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: NAME, namespace: shop}\nspec:\n  hosts: [NAME.shop]\n  ports: [{name: http, number: 80}]\n";

fn se(name: &str) -> String {
    SE.replace("NAME", name)
}

#[test]
fn unchanged_files_are_reused_and_changes_seen() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.yaml"), se("a")).expect("write");
    std::fs::write(dir.path().join("b.yaml"), se("b")).expect("write");
    let mut loader = Loader::default();
    let first = loader.load(dir.path()).expect("valid");
    assert_eq!(first.snapshot.services.len(), 2);

    // Change b only: a's resource is the very same object.
    std::fs::write(dir.path().join("b.yaml"), se("b2")).expect("write");
    let second = loader.load(dir.path()).expect("valid");
    let names: Vec<&str> = second
        .resources
        .service_entries
        .iter()
        .map(|r| r.name.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b2"]);
    assert!(Arc::ptr_eq(
        &first.resources.service_entries[0],
        &second.resources.service_entries[0]
    ));

    // A change that conflicts with an unchanged file is still caught.
    std::fs::write(dir.path().join("b.yaml"), se("a")).expect("write");
    match loader.load(dir.path()) {
        Err(LoadError::Invalid(p)) => assert!(p.to_string().contains("defined twice"), "{p}"),
        other => panic!("expected a duplicate, got {other:?}"),
    }

    // A removed file is forgotten.
    std::fs::remove_file(dir.path().join("b.yaml")).expect("rm");
    let third = loader.load(dir.path()).expect("valid");
    assert_eq!(third.snapshot.services.len(), 1);
}
