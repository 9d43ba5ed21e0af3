//! What the rounds measured, as tables: every round of every target,
//! then each target's medians over its rounds, then the comparisons —
//! each taken within a round (the two targets measured minutes apart at
//! most, in the same stretch of the machine) and summarised by their
//! median and range over the rounds.

use crate::load::Measure;

/// What one target measured in one round.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Round {
    pub(crate) h1: Measure,
    pub(crate) h2: Measure,
}

/// A target's memory after its rounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Memory {
    pub(crate) rss_mib: f64,
    /// What 1,000 idle keep-alive connections add (NaN: not measured).
    pub(crate) idle_mib_per_1000: f64,
}

/// One target's rounds (a failed round holds why) and memory.
pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) rounds: Vec<Result<Round, String>>,
    pub(crate) memory: Memory,
}

/// The median of `values` (NaN when there are none).
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// `median (min–max, n rounds)` of `values`.
fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{:.2}× ({:.2}–{:.2}, {} rounds)",
        median(values.to_vec()),
        min,
        max,
        values.len()
    )
}

impl Target {
    fn measured(&self) -> impl Iterator<Item = &Round> {
        self.rounds.iter().filter_map(|r| r.as_ref().ok())
    }

    /// The medians of its rounds' figures.
    fn medians(&self) -> Round {
        let of = |pick: fn(&Round) -> &Measure| Measure {
            rps: median(self.measured().map(|r| pick(r).rps).collect()),
            p50_ms: median(self.measured().map(|r| pick(r).p50_ms).collect()),
            p99_ms: median(self.measured().map(|r| pick(r).p99_ms).collect()),
            cpu_per_1000: median(self.measured().map(|r| pick(r).cpu_per_1000).collect()),
        };
        Round {
            h1: of(|r| &r.h1),
            h2: of(|r| &r.h2),
        }
    }
}

fn cpu(target: &Target, m: &Measure) -> String {
    if target.name == "direct" {
        "—".to_owned()
    } else {
        format!("{:.4}", m.cpu_per_1000)
    }
}

fn mib(target: &Target, v: f64) -> String {
    if target.name == "direct" || v.is_nan() {
        "—".to_owned()
    } else {
        format!("{v:.1} MiB")
    }
}

/// A round's figures as table cells: req/s, p50, p99 and CPU per 1,000
/// requests, HTTP/1.1 then HTTP/2.
fn cells(target: &Target, r: &Round) -> String {
    let one = |m: &Measure| {
        format!(
            "{:.0} | {:.2} ms | {:.2} ms | {}",
            m.rps,
            m.p50_ms,
            m.p99_ms,
            cpu(target, m)
        )
    };
    format!("{} | {}", one(&r.h1), one(&r.h2))
}

/// Prints the three tables and the comparisons.
pub(crate) fn print(targets: &[Target], seconds: u32, connections: u32, streams: u32, idle: usize) {
    let rounds = targets.iter().map(|t| t.rounds.len()).max().unwrap_or(0);
    println!(
        "\nwrk -t1 -c{connections} -d{seconds}s (HTTP/1.1 keep-alive); h2load -t1 -c{connections} -m{streams} -D{seconds} (h2c); each proxy on one thread; {rounds} rounds, each in another order\n"
    );
    println!(
        "| target | round | HTTP/1.1 req/s | p50 | p99 | CPU-s / 1k | HTTP/2 req/s | p50 | p99 | CPU-s / 1k |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for t in targets {
        for (i, r) in t.rounds.iter().enumerate() {
            match r {
                Ok(r) => println!("| {} | {} | {} |", t.name, i + 1, cells(t, r)),
                Err(e) => println!(
                    "| {} | {} | not measured: {} | | | | | | | |",
                    t.name,
                    i + 1,
                    e.lines().next().unwrap_or("")
                ),
            }
        }
    }
    println!("\nMedians over the rounds:\n");
    println!(
        "| target | HTTP/1.1 req/s | p50 | p99 | CPU-s / 1k | HTTP/2 req/s | p50 | p99 | CPU-s / 1k | RSS after | {idle} idle keep-alive |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for t in targets {
        println!(
            "| {} | {} | {} | {} |",
            t.name,
            cells(t, &t.medians()),
            mib(t, t.memory.rss_mib),
            mib(t, t.memory.idle_mib_per_1000),
        );
    }
    println!("\nWithin each round (median, range over the rounds):\n");
    let find = |name: &str| targets.iter().find(|t| t.name == name);
    if let Some(bare) = find("weft engine") {
        for with in targets
            .iter()
            .filter(|t| t.name.starts_with("weft engine + "))
        {
            compare(with, bare);
        }
    }
    if let Some(haproxy) = find("HAProxy") {
        for weft in targets.iter().filter(|t| t.name.starts_with("weft")) {
            compare(weft, haproxy);
        }
    }
}

/// `a / b` within each round both were measured in.
fn compare(a: &Target, b: &Target) {
    let pairs: Vec<(&Round, &Round)> = a
        .rounds
        .iter()
        .zip(&b.rounds)
        .filter_map(|(x, y)| Some((x.as_ref().ok()?, y.as_ref().ok()?)))
        .collect();
    if pairs.is_empty() {
        println!("- {} / {}: no round measured both", a.name, b.name);
        return;
    }
    let ratio =
        |f: fn(&Round) -> f64| -> Vec<f64> { pairs.iter().map(|(x, y)| f(x) / f(y)).collect() };
    println!(
        "- {} / {}: HTTP/1.1 req/s {}, p99 {}, CPU per request {}; HTTP/2 req/s {}, p99 {}, CPU per request {}",
        a.name,
        b.name,
        spread(&ratio(|r| r.h1.rps)),
        spread(&ratio(|r| r.h1.p99_ms)),
        spread(&ratio(|r| r.h1.cpu_per_1000)),
        spread(&ratio(|r| r.h2.rps)),
        spread(&ratio(|r| r.h2.p99_ms)),
        spread(&ratio(|r| r.h2.cpu_per_1000)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn a_failed_round_counts_in_neither_medians_nor_comparisons() {
        let m = |rps: f64| Measure {
            rps,
            p50_ms: 1.0,
            p99_ms: 2.0,
            cpu_per_1000: 0.02,
        };
        let round = |rps: f64| {
            Ok(Round {
                h1: m(rps),
                h2: m(rps),
            })
        };
        let t = Target {
            name: "weft engine",
            rounds: vec![round(100.0), Err("504s".into()), round(300.0)],
            memory: Memory {
                rss_mib: 1.0,
                idle_mib_per_1000: f64::NAN,
            },
        };
        assert_eq!(t.medians().h1.rps, 200.0);
        assert_eq!(spread(&[0.9, 1.1, 1.0]), "1.00× (0.90–1.10, 3 rounds)");
    }
}
