//! YAML text → documents.
//!
//! The fast path parses each document straight into a `serde_json::Value`.
//! Line numbers are only needed when something is wrong, so they are found
//! lazily: [`locate`] parses the file again with spans and walks a field
//! path (`spec.ports[0].number`) to the line it was written on.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

/// One parsed YAML document.
#[derive(Debug)]
pub(crate) struct Document {
    /// 1-based position among the file's non-empty documents.
    pub(crate) index: usize,
    /// The document as untyped JSON-like data.
    pub(crate) value: Value,
}

/// A file that is not valid YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    pub(crate) message: String,
    pub(crate) line: Option<u64>,
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
    }
}

/// Parses every non-empty document of a YAML file.
///
/// Booleans are strict (`yes`/`on` stay strings), duplicate keys are an
/// error, and alias expansion is bounded by the parser's default budget.
pub(crate) fn parse(text: &str) -> Result<Vec<Document>, YamlError> {
    let values: Vec<Value> =
        serde_saphyr::from_multiple_with_options(text, options()).map_err(|e| {
            let line = e.location().map(|l| l.line()).filter(|l| *l > 0);
            let message = e.to_string();
            // The parser appends "at line X, column Y"; we report the line ourselves.
            let message = match message.rfind(" at line ") {
                Some(i) => message[..i].to_owned(),
                None => message,
            };
            YamlError { message, line }
        })?;
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, value)| Document {
            index: i + 1,
            value,
        })
        .collect())
}

/// The line of `path` in document `index` (1-based) of `text`, or of its
/// nearest ancestor that has one; `""` gives the document's first line.
pub(crate) fn locate(text: &str, index: usize, path: &str) -> Option<u64> {
    let docs: Vec<Spanned<Node>> =
        serde_saphyr::from_multiple_with_options(text, options()).ok()?;
    let mut node = docs.get(index.checked_sub(1)?)?;
    let mut line = node.referenced.line();
    let mut rest = path;
    while !rest.is_empty() {
        let next = match &node.value {
            // Keys may contain dots (`weft.dev/node`): take the longest key
            // that the rest of the path starts with, as a whole segment.
            Node::Map(entries) => entries
                .iter()
                .filter_map(|(k, v)| {
                    let key = k.value.key_text()?;
                    let after = rest.strip_prefix(key.as_str())?;
                    (after.is_empty() || after.starts_with(['.', '['])).then_some((
                        key.len(),
                        after,
                        v,
                    ))
                })
                .max_by_key(|(len, _, _)| *len)
                .map(|(_, after, v)| (after, v)),
            Node::Seq(items) => rest.strip_prefix('[').and_then(|r| {
                let (i, after) = r.split_once(']')?;
                Some((after, items.get(i.parse::<usize>().ok()?)?))
            }),
            _ => None,
        };
        let Some((after, child)) = next else { break };
        node = child;
        if node.referenced.line() > 0 {
            line = node.referenced.line();
        }
        rest = after.strip_prefix('.').unwrap_or(after);
    }
    (line > 0).then_some(line)
}

/// A YAML node as the parser gives it, with spans on every child.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl Node {
    /// A mapping key as text (`80: x` has the key `"80"`).
    fn key_text(&self) -> Option<String> {
        match self {
            Node::Str(s) => Some(s.clone()),
            Node::Bool(b) => Some(b.to_string()),
            Node::Int(i) => Some(i.to_string()),
            Node::Uint(u) => Some(u.to_string()),
            Node::Float(f) => Some(f.to_string()),
            Node::Null | Node::Seq(_) | Node::Map(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Uint(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = a.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = a.next_entry()? {
            entries.push(entry);
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "---\n# empty\n---\napiVersion: v1\nkind: X\nspec:\n  ports:\n  - number: 80\n    flag: yes\n  labels:\n    weft.dev/node: n1\n---\na: 1\n";

    #[test]
    fn documents_and_strict_booleans() {
        let docs = parse(TEXT).expect("valid yaml");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].index, 1);
        assert_eq!(docs[0].value["spec"]["ports"][0]["number"], 80);
        // Strict booleans: `yes` stays a string.
        assert_eq!(docs[0].value["spec"]["ports"][0]["flag"], "yes");
        assert_eq!(docs[1].index, 2);
    }

    #[test]
    fn lines_are_found_lazily() {
        let cases = [
            (1, "", Some(4)),
            (1, "kind", Some(5)),
            (1, "spec.ports[0].number", Some(8)),
            (1, "spec.ports[0].flag", Some(9)),
            (1, "spec.ports[0].missing", Some(8)),
            (1, "spec.labels.weft.dev/node", Some(11)),
            (2, "a", Some(13)),
            (3, "a", None),
        ];
        for (doc, path, want) in cases {
            assert_eq!(locate(TEXT, doc, path), want, "{doc} {path}");
        }
    }

    #[test]
    fn syntax_errors_have_lines() {
        let err = parse("a: 1\n---\nb: [1, 2\nc: 3\n").expect_err("broken");
        assert!(err.line.is_some(), "{err:?}");
        assert!(!err.message.contains(" at line "), "{err:?}");
        let err = parse("a: 1\na: 2\n").expect_err("duplicate key");
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("duplicate"), "{err:?}");
    }

    #[test]
    fn non_string_keys_become_strings() {
        let docs = parse("ports:\n  80: http\n").expect("valid");
        assert_eq!(docs[0].value["ports"]["80"], "http");
    }
}
