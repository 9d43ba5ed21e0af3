//! docs/configuration.md lists every field weft refuses by name, with
//! its kind: the table under "Fields weft refuses" cannot fall behind the
//! code.

#[test]
fn every_refused_field_is_documented() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .expect("docs/configuration.md");
    let section = doc
        .split_once("## Fields weft refuses")
        .map(|(_, rest)| rest)
        .expect("a 'Fields weft refuses' section");
    let mut missing = Vec::new();
    for (group, kind, path, why) in weft_config::kinds::refused_fields() {
        let group = if group.is_empty() { "core" } else { group };
        let row = format!("| {kind} ({group}) | `{path}` |");
        if !section.contains(&row) {
            missing.push(format!("{row} {} |", why.replace('|', "\\|")));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks these rows:\n{}",
        missing.join("\n")
    );
}
