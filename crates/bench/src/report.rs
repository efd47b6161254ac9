//! Results: one [`Run`] per scenario repetition, printed as a table and written as JSON.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procs::Machine;

#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        })
    }
}

/// CPU used during the measured window, in seconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Cpu {
    pub server_s: f64,
    pub bench_s: f64,
    /// Everything else on the machine (other builds, the kernel's own threads): the noise.
    pub others_s: f64,
    pub window_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub text: String,
    pub met: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub scenario: String,
    /// `fluxcb`, or `ceiling` for the trivial 202 server.
    pub server: String,
    pub repetition: usize,
    pub throughput: f64,
    /// What `throughput` counts per second.
    pub unit: String,
    pub requests: u64,
    pub items: u64,
    pub seconds: f64,
    /// The latency the table shows; what it measures is in `latency_name`.
    pub latency: Option<Percentiles>,
    pub latency_name: String,
    /// Further distributions (end-to-end has three).
    pub other_latencies: BTreeMap<String, Percentiles>,
    pub errors: u64,
    pub error_detail: BTreeMap<String, u64>,
    pub cpu: Cpu,
    pub server_rss_mb: f64,
    pub server_peak_rss_mb: f64,
    pub ratio_to_ceiling: Option<f64>,
    pub ceiling_ref: Option<String>,
    pub goal: Option<Goal>,
    pub facts: BTreeMap<String, Value>,
    pub notes: Vec<String>,
}

pub type Value = serde_json::Value;

impl Run {
    pub fn new(scenario: &str, server: &str, repetition: usize, unit: &str) -> Self {
        Self {
            scenario: scenario.into(),
            server: server.into(),
            repetition,
            throughput: 0.0,
            unit: unit.into(),
            requests: 0,
            items: 0,
            seconds: 0.0,
            latency: None,
            latency_name: String::new(),
            other_latencies: BTreeMap::new(),
            errors: 0,
            error_detail: BTreeMap::new(),
            cpu: Cpu::default(),
            server_rss_mb: 0.0,
            server_peak_rss_mb: 0.0,
            ratio_to_ceiling: None,
            ceiling_ref: None,
            goal: None,
            facts: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    pub fn fact(&mut self, key: &str, value: impl Into<Value>) {
        self.facts.insert(key.into(), value.into());
    }
}

#[derive(Serialize)]
pub struct Report<'a> {
    pub machine: &'a Machine,
    pub command: String,
    pub started_at: String,
    pub runs: &'a [Run],
    pub summary: Vec<Summary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub server: String,
    pub unit: String,
    pub runs: usize,
    pub best: f64,
    pub worst: f64,
    pub median: f64,
    pub best_ratio_to_ceiling: Option<f64>,
    /// fluxcb's median as a multiple of legacy's median in the same scenario (same run).
    pub vs_legacy: Option<f64>,
    pub goal: Option<String>,
    pub goal_met_runs: usize,
}

fn fmt_rate(x: f64) -> String {
    if x >= 100.0 {
        format!("{:.0}", x)
    } else {
        format!("{:.1}", x)
    }
}

fn fmt_ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{:.0}", x)
    } else if x >= 10.0 {
        format!("{:.1}", x)
    } else {
        format!("{:.2}", x)
    }
}

pub fn table(runs: &[Run]) -> String {
    let header = [
        "scenario",
        "server",
        "rep",
        "throughput",
        "unit",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "srv CPU s",
        "srv cores",
        "bench CPU s",
        "others CPU s",
        "peak RSS MB",
        "vs ceiling",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in runs {
        let lat = |f: fn(&Percentiles) -> f64| {
            r.latency
                .as_ref()
                .map_or_else(|| "-".into(), |p| fmt_ms(f(p)))
        };
        let cores = if r.cpu.window_s > 0.0 {
            format!("{:.2}", r.cpu.server_s / r.cpu.window_s)
        } else {
            "-".into()
        };
        rows.push(vec![
            r.scenario.clone(),
            r.server.clone(),
            r.repetition.to_string(),
            fmt_rate(r.throughput),
            r.unit.clone(),
            lat(|p| p.p50_ms),
            lat(|p| p.p90_ms),
            lat(|p| p.p99_ms),
            lat(|p| p.p999_ms),
            r.errors.to_string(),
            format!("{:.1}", r.cpu.server_s),
            cores,
            format!("{:.1}", r.cpu.bench_s),
            format!("{:.1}", r.cpu.others_s),
            format!("{:.0}", r.server_peak_rss_mb),
            r.ratio_to_ceiling
                .map_or_else(|| "-".into(), |x| format!("{:.1}%", x * 100.0)),
        ]);
    }
    render(&rows)
}

fn render(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 2 || i == 4 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if n == 0 {
            let rule: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    if i < 2 || i == 4 {
                        format!(":{}", "-".repeat(w.saturating_sub(1)))
                    } else {
                        format!("{}:", "-".repeat(w.saturating_sub(1)))
                    }
                })
                .collect();
            let _ = writeln!(out, "| {} |", rule.join(" | "));
        }
    }
    out
}

/// Per run, what the table has no column for.
pub fn details(runs: &[Run]) -> String {
    let mut out = String::new();
    for r in runs {
        let _ = writeln!(out, "{} / {} / rep {}:", r.scenario, r.server, r.repetition);
        if r.latency.is_some() {
            let _ = writeln!(out, "  latency shown: {}", r.latency_name);
        }
        for (name, p) in &r.other_latencies {
            let _ = writeln!(
                out,
                "  {name}: p50 {} / p90 {} / p99 {} / p99.9 {} / max {} ms (n={})",
                fmt_ms(p.p50_ms),
                fmt_ms(p.p90_ms),
                fmt_ms(p.p99_ms),
                fmt_ms(p.p999_ms),
                fmt_ms(p.max_ms),
                p.count
            );
        }
        if !r.error_detail.is_empty() {
            let _ = writeln!(out, "  errors: {:?}", r.error_detail);
        }
        for (k, v) in &r.facts {
            let _ = writeln!(out, "  {k}: {v}");
        }
        let _ = writeln!(
            out,
            "  server RSS now {:.0} MB, peak {:.0} MB",
            r.server_rss_mb, r.server_peak_rss_mb
        );
        if let Some(c) = &r.ceiling_ref {
            let _ = writeln!(out, "  vs ceiling: {c}");
        }
        if let Some(g) = &r.goal {
            let _ = writeln!(
                out,
                "  goal: {} -> {}",
                g.text,
                if g.met { "MET" } else { "MISSED" }
            );
        }
        for n in &r.notes {
            let _ = writeln!(out, "  note: {n}");
        }
    }
    out
}

pub fn summarise(runs: &[Run]) -> Vec<Summary> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in runs {
        let k = (r.scenario.clone(), r.server.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut out: Vec<Summary> = keys
        .into_iter()
        .map(|(scenario, server)| {
            let group: Vec<&Run> = runs
                .iter()
                .filter(|r| r.scenario == scenario && r.server == server)
                .collect();
            let mut xs: Vec<f64> = group.iter().map(|r| r.throughput).collect();
            xs.sort_by(f64::total_cmp);
            let best_run = group
                .iter()
                .max_by(|a, b| a.throughput.total_cmp(&b.throughput))
                .expect("a group has runs");
            Summary {
                scenario,
                server,
                unit: best_run.unit.clone(),
                runs: group.len(),
                best: xs[xs.len() - 1],
                worst: xs[0],
                median: xs[xs.len() / 2],
                best_ratio_to_ceiling: group
                    .iter()
                    .filter_map(|r| r.ratio_to_ceiling)
                    .max_by(f64::total_cmp),
                vs_legacy: None,
                goal: best_run.goal.as_ref().map(|g| g.text.clone()),
                goal_met_runs: group
                    .iter()
                    .filter(|r| r.goal.as_ref().is_some_and(|g| g.met))
                    .count(),
            }
        })
        .collect();
    let legacy: Vec<(String, f64)> = out
        .iter()
        .filter(|s| s.server == "legacy" && s.median > 0.0)
        .map(|s| (s.scenario.clone(), s.median))
        .collect();
    for s in out.iter_mut().filter(|s| s.server == "fluxcb") {
        s.vs_legacy = legacy
            .iter()
            .find(|(scenario, _)| *scenario == s.scenario)
            .map(|(_, median)| s.median / median);
    }
    out
}

pub fn summary_table(summary: &[Summary]) -> String {
    let mut rows = vec![[
        "scenario",
        "server",
        "runs",
        "best",
        "median",
        "worst",
        "unit",
        "best vs ceiling",
        "median vs legacy",
        "goal",
        "met in",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    for s in summary {
        rows.push(vec![
            s.scenario.clone(),
            s.server.clone(),
            s.runs.to_string(),
            fmt_rate(s.best),
            fmt_rate(s.median),
            fmt_rate(s.worst),
            s.unit.clone(),
            s.best_ratio_to_ceiling
                .map_or_else(|| "-".into(), |x| format!("{:.1}%", x * 100.0)),
            s.vs_legacy
                .map_or_else(|| "-".into(), |x| format!("{x:.1}x")),
            s.goal.clone().unwrap_or_else(|| "-".into()),
            if s.goal.is_some() {
                format!("{}/{}", s.goal_met_runs, s.runs)
            } else {
                "-".into()
            },
        ]);
    }
    render_plain(&rows)
}

fn render_plain(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "| {} |", rule.join(" | "));
        }
    }
    out
}
