//! A parser for the Prometheus text exposition format (and the
//! OpenMetrics text weft's proxies emit): samples as (name, labels,
//! value). Comments, `# TYPE`/`# HELP`/`# UNIT` and `# EOF` are skipped.
//! Anything else that is not a well-formed sample is an error naming the
//! line, so a proxy answering garbage is marked stale instead of feeding
//! the aggregate nonsense.

use std::collections::BTreeMap;

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with its `_total`, `_bucket`… suffix).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// A label's value, `""` when absent.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Why a text is not the Prometheus format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Largest text accepted (a runaway exporter is garbage too).
pub const MAX_TEXT: usize = 32 * 1024 * 1024;

/// Parses a whole exposition.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    if text.len() > MAX_TEXT {
        return Err(ParseError {
            line: 0,
            reason: format!("{} bytes is more than the {MAX_TEXT} accepted", text.len()),
        });
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(sample(line).map_err(|reason| ParseError {
            line: i + 1,
            reason,
        })?);
    }
    Ok(out)
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .char_indices()
        .find(|(i, c)| !is_name_char(*c, *i == 0))
        .map_or(line.len(), |(i, _)| i);
    if name_end == 0 {
        return Err(format!("expected a metric name at {:?}", truncate(line)));
    }
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remaining) = label_set(after)?;
        labels = parsed;
        rest = remaining;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or_else(|| format!("{name}: no value"))?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse::<f64>()
            .map_err(|_| format!("{name}: {v:?} is not a number"))?,
    };
    // An optional timestamp (and, in OpenMetrics, an exemplar after `#`).
    if let Some(ts) = fields.next()
        && ts != "#"
        && ts.parse::<f64>().is_err()
    {
        return Err(format!("{name}: {ts:?} is not a timestamp"));
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// `name="value",…}` → the labels and what follows the `}`.
fn label_set(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = s.find('=').ok_or("a label without '='")?;
        let key = s[..eq].trim();
        if key.is_empty()
            || !key
                .chars()
                .enumerate()
                .all(|(i, c)| is_name_char(c, i == 0) && c != ':')
        {
            return Err(format!("{key:?} is not a label name"));
        }
        let after = s[eq + 1..].trim_start();
        let mut chars = after.char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {key}: the value is not quoted"));
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (true, other) => {
                    value.push(other);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, other) => value.push(other),
            }
        }
        let end = end.ok_or_else(|| format!("label {key}: unterminated value"))?;
        labels.insert(key.to_owned(), value);
        s = after[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err(format!("after label {key}: expected ',' or '}}'"));
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_proxies_emit() {
        let text = "# HELP istio_requests Requests handled\n\
# TYPE istio_requests counter\n\
istio_requests_total{reporter=\"waypoint\",source_workload=\"fe\",response_code=\"200\"} 12\n\
istio_request_duration_milliseconds_bucket{le=\"+Inf\",x=\"a\\\"b\\\\c\"} 3 1700000000\n\
weft_up 1.5e3\n\
# EOF\n";
        let samples = parse(text).expect("valid");
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].label("source_workload"), "fe");
        assert_eq!(samples[0].value, 12.0);
        assert_eq!(samples[1].label("x"), "a\"b\\c");
        assert_eq!(samples[2].value, 1500.0);
    }

    #[test]
    fn garbage_is_an_error_with_its_line() {
        for (text, line, want) in [
            ("ok 1\n<html>", 2, "metric name"),
            ("a{b=\"c\" 1", 1, "expected ','"),
            ("a{b=c} 1", 1, "not quoted"),
            ("a{b=\"c} 1", 1, "unterminated"),
            ("a 1\nb", 2, "no value"),
            ("a one", 1, "not a number"),
            ("a 1 yesterday", 1, "not a timestamp"),
        ] {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line, line, "{text}");
            assert!(err.reason.contains(want), "{text}: {err}");
        }
    }
}
