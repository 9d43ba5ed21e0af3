//! Durations as written in configuration: Go/Istio style (`500ms`, `1.5s`,
//! `2m`, `1h30m`), which is a superset of the protobuf JSON form (`0.5s`).

use std::time::Duration;

/// Parses a duration such as `10s`, `0.5s`, `250ms`, `1m30s` or `2h`.
///
/// Units: `h`, `m`, `s`, `ms`, `us` (or `µs`), `ns`. A unit is required
/// (a bare `5` is ambiguous and rejected); negative values are rejected.
pub fn parse(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration; write e.g. \"500ms\" or \"2s\"".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return Err(format!(
                "{input:?} is not a duration; write e.g. \"500ms\" or \"2s\""
            ));
        }
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{input:?} is not a duration: bad number {num:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            "" => {
                return Err(format!(
                    "{input:?} has no unit; write e.g. \"{num}s\" or \"{num}ms\""
                ));
            }
            other => {
                return Err(format!(
                    "{input:?} has unknown unit {other:?} (use h, m, s, ms, us or ns)"
                ));
            }
        };
        total += value * scale;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("{input:?} is out of range"))
}

/// Formats a duration the way [`parse`] reads it, e.g. `1.5s` or `250ms`.
pub fn format(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = [
            ("0", Duration::ZERO),
            ("1s", Duration::from_secs(1)),
            ("0.5s", Duration::from_millis(500)),
            ("250ms", Duration::from_millis(250)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("10us", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
        ];
        for (input, want) in ok {
            assert_eq!(parse(input), Ok(want), "{input}");
        }
        for bad in ["", "5", "-1s", "1x", "s", "1.2.3s", ".s"] {
            assert!(parse(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn round_trip() {
        for d in [
            Duration::from_secs(3),
            Duration::from_millis(1500),
            Duration::from_millis(20),
        ] {
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
