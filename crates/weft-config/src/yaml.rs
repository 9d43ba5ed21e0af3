//! YAML text → documents: one `serde_json::Value` per document plus an index
//! from field path (`spec.ports[0].number`) to the line it was written on.
//!
//! Decoding goes through a small tree of [`Spanned`] nodes so that every
//! later error, typed or semantic, can point at a line without the typed
//! structs having to carry spans themselves.

use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::Spanned;

/// One parsed YAML document.
#[derive(Debug)]
pub(crate) struct Document {
    /// 1-based position among the file's non-empty documents.
    pub(crate) index: usize,
    /// The line the document's content starts on.
    pub(crate) line: u64,
    /// The document as untyped JSON-like data.
    pub(crate) value: Value,
    /// Where each field was written.
    pub(crate) lines: LineIndex,
}

/// Field path → line number, for one document.
#[derive(Debug, Default, Clone)]
pub struct LineIndex(HashMap<String, u64>);

impl LineIndex {
    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<u64> {
        let mut p = path;
        loop {
            if let Some(line) = self.0.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// A file that is not valid YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    pub(crate) message: String,
    pub(crate) line: Option<u64>,
}

/// Parses every non-empty document of a YAML file.
///
/// Booleans are strict (`yes`/`on` stay strings), duplicate keys are an
/// error, and alias expansion is bounded by the parser's default budget.
pub(crate) fn parse(text: &str) -> Result<Vec<Document>, YamlError> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
    };
    let nodes: Vec<Spanned<Node>> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|e| {
            let line = e.location().map(|l| l.line()).filter(|l| *l > 0);
            let message = e.to_string();
            // The parser appends "at line X, column Y"; we report the line ourselves.
            let message = match message.rfind(" at line ") {
                Some(i) => message[..i].to_owned(),
                None => message,
            };
            YamlError { message, line }
        })?;
    Ok(nodes
        .into_iter()
        .enumerate()
        .map(|(i, node)| {
            let mut lines = LineIndex::default();
            let line = node.referenced.line();
            let value = into_value(node, String::new(), &mut lines);
            Document {
                index: i + 1,
                line,
                value,
                lines,
            }
        })
        .collect())
}

fn into_value(node: Spanned<Node>, path: String, lines: &mut LineIndex) -> Value {
    let line = node.referenced.line();
    if line > 0 {
        lines.0.entry(path.clone()).or_insert(line);
    }
    match node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(i) => Value::Number(i.into()),
        Node::Uint(u) => Value::Number(u.into()),
        Node::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Node::Str(s) => Value::String(s),
        Node::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| into_value(item, format!("{path}[{i}]"), lines))
                .collect(),
        ),
        Node::Map(entries) => {
            let mut map = Map::new();
            for (key, value) in entries {
                let key = key.value.into_key();
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                map.insert(key, into_value(value, child, lines));
            }
            Value::Object(map)
        }
    }
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
    /// Renders a mapping key as a string (`80: x` has the key `"80"`).
    fn into_key(self) -> String {
        match self {
            Node::Str(s) => s,
            Node::Null => "null".into(),
            Node::Bool(b) => b.to_string(),
            Node::Int(i) => i.to_string(),
            Node::Uint(u) => u.to_string(),
            Node::Float(f) => f.to_string(),
            Node::Seq(_) | Node::Map(_) => "<complex key>".into(),
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

    #[test]
    fn documents_lines_and_paths() {
        let text = "---\n# empty\n---\napiVersion: v1\nkind: X\nspec:\n  ports:\n  - number: 80\n    flag: yes\n---\na: 1\n";
        let docs = parse(text).expect("valid yaml");
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].index, docs[0].line), (1, 4));
        assert_eq!(docs[0].value["spec"]["ports"][0]["number"], 80);
        // Strict booleans: `yes` stays a string.
        assert_eq!(docs[0].value["spec"]["ports"][0]["flag"], "yes");
        assert_eq!(docs[0].lines.line_of("spec.ports[0].number"), Some(8));
        assert_eq!(docs[0].lines.line_of("spec.ports[0].flag"), Some(9));
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(docs[0].lines.line_of("spec.ports[0].missing"), Some(8));
        assert_eq!(docs[0].lines.line_of("kind"), Some(5));
        assert_eq!((docs[1].index, docs[1].line), (2, 11));
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
