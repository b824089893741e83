//! Results: the final table (stdout), `--json` (one object), and `--svg` (two panels).
//!
//! Owns: formatting only. Scenarios fill a `Report`; nothing here measures.

use serde_json::{json, Value};
use std::fmt::Write as _;

/// One second of the run, for the live line and the chart.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Point {
    pub t_s: f64,
    pub connections: u64,
    pub deliveries_per_s: f64,
    pub p99_ns: u64,
}

pub struct Report {
    pub scenario: &'static str,
    pub parameters: Value,
    /// (json key, human label, value) in display order.
    pub figures: Vec<(String, String, Value)>,
    pub notes: Vec<String>,
    pub series: Vec<Point>,
    pub steps: Vec<Value>,
}

impl Report {
    pub fn new(scenario: &'static str, parameters: Value) -> Self {
        Report { scenario, parameters, figures: Vec::new(), notes: Vec::new(), series: Vec::new(), steps: Vec::new() }
    }

    pub fn figure(&mut self, key: &str, label: &str, value: impl Into<Value>) {
        self.figures.push((key.to_string(), label.to_string(), value.into()));
    }

    pub fn to_json(&self) -> Value {
        let figures: serde_json::Map<String, Value> = self.figures.iter().map(|(k, _, v)| (k.clone(), v.clone())).collect();
        json!({
            "scenario": self.scenario,
            "parameters": self.parameters,
            "figures": figures,
            "notes": self.notes,
            "steps": self.steps,
            "series": self.series,
            "host": crate::host::facts(),
        })
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let host = crate::host::facts();
        let _ = writeln!(
            out,
            "ringcast-loadtest {}  ({} cores, kernel {}, io_uring {})",
            self.scenario, host["cores"], host["kernel"].as_str().unwrap_or("?"), host["io_uring"].as_str().unwrap_or("?")
        );
        let width = self.figures.iter().map(|(_, l, _)| l.len()).max().unwrap_or(10);
        let _ = writeln!(out, "{}", "-".repeat(width + 24));
        for (_, label, value) in &self.figures {
            let _ = writeln!(out, "{label:<width$}  {}", human(value));
        }
        if !self.steps.is_empty() {
            let _ = writeln!(out, "{}", "-".repeat(width + 24));
            let _ = writeln!(out, "{:>10} {:>10} {:>10} {:>14} {:>10} {:>10} {:>5}", "rate", "achieved", "published", "deliveries/s", "lost", "p99 ms", "pass");
            for s in &self.steps {
                let num = |k: &str| s[k].as_f64().unwrap_or(0.0);
                let _ = writeln!(
                    out,
                    "{:>10} {:>10} {:>10} {:>14} {:>10} {:>10.3} {:>5}",
                    group(num("rate") as i64),
                    group(num("achieved_rate") as i64),
                    group(num("published") as i64),
                    group(num("deliveries_per_s") as i64),
                    group(num("lost") as i64),
                    num("p99_ns") / 1e6,
                    if s["pass"].as_bool() == Some(true) { "yes" } else { "no" }
                );
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

fn human(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.abs() >= 100.0 { format!("{}", group(f.round() as i64)) } else { format!("{f:.3}") }
        }
        Value::Number(n) => n.as_i64().map(group).unwrap_or_else(|| n.to_string()),
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// 1234567 → "1,234,567".
pub fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

pub fn ms(ns: u64) -> Value {
    json!((ns as f64 / 1e3).round() / 1e3)
}

/// Writes three stacked panels over time: deliveries/s, p99 latency, connections ready.
pub fn svg(title: &str, series: &[Point]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 820.0;
    let mut s = String::new();
    let _ = writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="22" text-anchor="middle" font-size="16">{}</text>"#, W / 2.0, escape(title));
    let t_max = series.iter().map(|p| p.t_s).fold(1.0, f64::max);
    let rate: Vec<(f64, f64)> = series.iter().map(|p| (p.t_s, p.deliveries_per_s)).collect();
    let p99: Vec<(f64, f64)> = series.iter().map(|p| (p.t_s, p.p99_ns as f64 / 1e6)).collect();
    panel(&mut s, 40.0, "deliveries / s", &rate, t_max, "#1f77b4");
    panel(&mut s, 300.0, "p99 latency (ms)", &p99, t_max, "#d62728");
    let conns: Vec<(f64, f64)> = series.iter().map(|p| (p.t_s, p.connections as f64)).collect();
    panel(&mut s, 560.0, "connections ready", &conns, t_max, "#2ca02c");
    let _ = writeln!(s, "</svg>");
    s
}

fn panel(s: &mut String, top: f64, label: &str, points: &[(f64, f64)], t_max: f64, color: &str) {
    let (left, width, height) = (90.0, 780.0, 200.0);
    let y_max = nice_ceiling(points.iter().map(|p| p.1).fold(0.0, f64::max));
    let x = |t: f64| left + t / t_max * width;
    let y = |v: f64| top + height - v / y_max * height;
    let _ = writeln!(s, r##"<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#888"/>"##);
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let yy = y(v);
        let _ = writeln!(s, r##"<line x1="{left}" y1="{yy}" x2="{}" y2="{yy}" stroke="#eee"/>"##, left + width);
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, left - 6.0, yy + 4.0, tick_label(v));
    }
    for i in 0..=5 {
        let t = t_max * i as f64 / 5.0;
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{:.0} s</text>"#, x(t), top + height + 16.0, t);
    }
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">{}</text>"#,
        top + height / 2.0,
        top + height / 2.0,
        escape(label)
    );
    if points.is_empty() {
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">no data</text>"#, left + width / 2.0, top + height / 2.0);
        return;
    }
    let path: Vec<String> = points.iter().map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v))).collect();
    let _ = writeln!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, path.join(" "));
}

fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= v {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn tick_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Medians and spread over runs: one Markdown row per (scenario, target, label), one
/// column per figure, each cell `median [min–max]` (or the value, for a single run).
pub fn summarize(runs: &[Value], figures: &[String]) -> String {
    let mut groups: Vec<(String, Vec<&Value>)> = Vec::new();
    for run in runs {
        let p = &run["parameters"];
        let label = p["label"].as_str().map(str::to_string).unwrap_or_else(|| {
            format!("{} {}", run["scenario"].as_str().unwrap_or("?"), p["target"].as_str().unwrap_or("ringcast"))
        });
        match groups.iter_mut().find(|(l, _)| *l == label) {
            Some((_, v)) => v.push(run),
            None => groups.push((label, vec![run])),
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "| run | n | {} |", figures.join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---|".repeat(figures.len()));
    for (label, group) in &groups {
        let cells: Vec<String> = figures
            .iter()
            .map(|f| {
                let mut values: Vec<f64> = group.iter().filter_map(|r| r["figures"][f].as_f64()).collect();
                values.sort_by(|a, b| a.total_cmp(b));
                match values.len() {
                    0 => "-".into(),
                    1 => cell(values[0]),
                    n => {
                        let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
                        format!("{} [{}–{}]", cell(median), cell(values[0]), cell(values[n - 1]))
                    }
                }
            })
            .collect();
        let _ = writeln!(out, "| {label} | {} | {} |", group.len(), cells.join(" | "));
    }
    out
}

fn cell(v: f64) -> String {
    if v.abs() >= 1000.0 {
        group(v.round() as i64)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Every JSON value in a text: one per line, or pretty-printed one after another.
pub fn parse_json_stream(text: &str) -> Result<Vec<Value>, serde_json::Error> {
    serde_json::Deserializer::from_str(text).into_iter::<Value>().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarize_takes_medians_per_label() {
        let text = r#"{"scenario":"fanout","parameters":{"label":"a"},"figures":{"x":3,"y":1.5}}
{"scenario":"fanout","parameters":{"label":"a"},"figures":{"x":1,"y":2.5}}
{
  "scenario":"fanout","parameters":{"label":"a"},"figures":{"x":2000}
}
{"scenario":"idle","parameters":{"target":"nats-ws"},"figures":{"x":7}}"#;
        let runs = parse_json_stream(text).unwrap();
        let table = summarize(&runs, &["x".into(), "y".into()]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[2], "| a | 3 | 3 [1–2,000] | 2 [1.500–2.500] |");
        assert_eq!(lines[3], "| idle nats-ws | 1 | 7 | - |");
    }

    #[test]
    fn grouping_and_ceilings() {
        assert_eq!(group(1234567), "1,234,567");
        assert_eq!(group(-1000), "-1,000");
        assert_eq!(group(12), "12");
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(380_000.0), 500_000.0);
        assert_eq!(nice_ceiling(1.2), 2.0);
    }

    #[test]
    fn svg_has_both_panels() {
        let series: Vec<Point> =
            (0..10).map(|i| Point { t_s: i as f64, connections: 100, deliveries_per_s: 1000.0 * i as f64, p99_ns: 1_000_000 }).collect();
        let out = svg("fanout <test>", &series);
        assert!(out.starts_with("<svg") && out.trim_end().ends_with("</svg>"));
        assert_eq!(out.matches("<polyline").count(), 3);
        assert!(out.contains("fanout &lt;test&gt;"));
    }
}
