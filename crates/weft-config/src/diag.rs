//! Diagnostics: every problem found in a configuration, each pointing at a
//! file, document, line, object and field, printed one per line as
//!
//! ```text
//! examples/demo/registry.yaml#2:14 ServiceEntry shop/payments: spec.ports[0].number: 70000 is not a valid port (1-65535)
//! ```
//!
//! `#2` is the second document of the file and `:14` the line.
//!
//! A problem is an error (the configuration is not loaded) or a warning
//! (it loads: a deprecated field read in place of its replacement, a field
//! that has no effect where it is attached). Warnings print with
//! `warning:` before the field, so they stand apart:
//!
//! ```text
//! vs.yaml#1:9 VirtualService shop/ratings: warning: spec.http[0].fault.delay.percent: deprecated; use percentage: {value: 100}
//! ```

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::yaml;

/// Where a resource came from: its file and document, and the file's text
/// so that lines can be found when a problem needs one.
#[derive(Clone)]
pub struct Origin {
    /// The file, as the user named it (relative paths stay relative).
    pub file: Arc<PathBuf>,
    /// 1-based document index within the file.
    pub doc: usize,
    /// The whole file's text, shared by its documents.
    pub source: Arc<str>,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.file.display(), self.doc)
    }
}

impl Origin {
    /// The line of `field` (or of the document when `field` is empty).
    /// Found by parsing the file again: only problems need lines.
    pub fn line_of(&self, field: &str) -> Option<u64> {
        yaml::locate(&self.source, self.doc, field)
    }

    /// `file#doc:line` for the document itself.
    pub fn describe(&self) -> String {
        match self.line_of("") {
            Some(line) => format!("{}#{}:{line}", self.file.display(), self.doc),
            None => format!("{}#{}", self.file.display(), self.doc),
        }
    }
}

/// How serious a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Severity {
    /// The configuration is not loaded.
    #[default]
    Error,
    /// The configuration loads; the operator should still look.
    Warning,
}

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based document index, when the problem is inside a document.
    pub doc: Option<usize>,
    /// Line, when known.
    pub line: Option<u64>,
    /// `Kind namespace/name` of the resource, when known.
    pub object: Option<String>,
    /// Field path such as `spec.ports[0].number`, when the problem is in a field.
    pub field: Option<String>,
    /// What is wrong, written for the operator.
    pub message: String,
}

impl Diagnostic {
    /// A problem with a whole file (unreadable, not YAML).
    pub fn file(file: impl Into<PathBuf>, line: Option<u64>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: file.into(),
            doc: None,
            line,
            object: None,
            field: None,
            message: message.into(),
        }
    }

    /// A problem at `field` of the resource from `origin`.
    pub fn at(
        origin: &Origin,
        object: Option<String>,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        let line = origin.line_of(field);
        Diagnostic {
            severity: Severity::Error,
            file: origin.file.as_ref().clone(),
            doc: Some(origin.doc),
            line,
            object,
            field: (!field.is_empty()).then(|| field.to_owned()),
            message: message.into(),
        }
    }

    /// The same problem as a warning.
    pub fn warning(self) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..self
        }
    }

    /// Whether it stops the configuration from loading.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(doc) = self.doc {
            write!(f, "#{doc}")?;
        }
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(object) = &self.object {
            write!(f, " {object}")?;
        }
        f.write_str(": ")?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one configuration, in file order: errors and
/// the warnings found beside them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<Diagnostic>);

impl Problems {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many there are, warnings included.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// How many are errors.
    pub fn errors(&self) -> usize {
        self.0.iter().filter(|d| d.is_error()).count()
    }

    /// How many are warnings.
    pub fn warnings(&self) -> usize {
        self.0.len() - self.errors()
    }

    /// Iterates over them.
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Collects the problems of one resource, labelling each with its origin
/// and object name.
pub struct Ctx<'a> {
    origin: &'a Origin,
    object: Option<String>,
    out: &'a mut Vec<Diagnostic>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        origin: &'a Origin,
        object: Option<String>,
        out: &'a mut Vec<Diagnostic>,
    ) -> Self {
        Ctx {
            origin,
            object,
            out,
        }
    }

    /// Records a problem at `field`.
    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        self.out.push(Diagnostic::at(
            self.origin,
            self.object.clone(),
            field,
            message,
        ));
    }

    /// Records a warning at `field`: the configuration still loads.
    pub fn warn(&mut self, field: &str, message: impl Into<String>) {
        self.out
            .push(Diagnostic::at(self.origin, self.object.clone(), field, message).warning());
    }

    /// Records `Err(message)` from a check at `field`.
    pub fn check(&mut self, field: &str, result: Result<(), String>) {
        if let Err(message) = result {
            self.error(field, message);
        }
    }
}
