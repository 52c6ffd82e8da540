//! `report.html`: one self-contained page — inline SVG charts (throughput, write latency
//! p50/p99 per second, replication lag) with every fault marked, RTO per failover, the
//! faults as applied, and the verdict table. No script, no stylesheet or font fetched:
//! it opens from a mail attachment or a CI artifact as it is.

use std::fmt::Write as _;

use super::checker::{Failover, Outcome, Verdict};
use super::history::{History, PrimaryStatus};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 230.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 30.0;

/// One line of a chart: name, colour, points (seconds, value).
struct Series {
    name: &'static str,
    colour: &'static str,
    points: Vec<(f64, f64)>,
}

/// Escapes text for HTML and SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tick step of 1, 2 or 5 × 10^n giving about `ticks` ticks up to `max`.
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// A label for `value` with as many decimals as `step` needs, so labels never repeat.
fn tick_label(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{value:.decimals$}")
}

/// Fault spans: (start s, end s, label).
fn fault_spans(history: &History) -> Vec<(f64, f64, String)> {
    let mut spans = Vec::new();
    for (i, f) in history.faults.iter().enumerate() {
        if matches!(f.action.as_str(), "thaw" | "start" | "honest" | "none") {
            continue;
        }
        let end = history.faults[i + 1..]
            .iter()
            .find(|e| e.fault == f.fault && e.target == f.target)
            .map_or(f.at_ms, |e| e.at_ms);
        let label = format!("{} {}", f.action, f.target);
        spans.push((f.at_ms as f64 / 1000.0, end as f64 / 1000.0, label));
    }
    spans
}

fn chart(
    title: &str,
    unit: &str,
    series: &[Series],
    duration_s: f64,
    faults: &[(f64, f64, String)],
) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let max_y = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let y_step = nice_step(if max_y > 0.0 { max_y } else { 1.0 }, 4.0);
    let y_max = (max_y / y_step).ceil().max(1.0) * y_step;
    let x_max = duration_s.max(1.0);
    let x = |s: f64| LEFT + s / x_max * plot_w;
    let y = |v: f64| TOP + plot_h - v / y_max * plot_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-label="{t}"><title>{t}</title>"#,
        t = escape(title)
    );
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{} ({})</text>"#,
        escape(title),
        escape(unit)
    );
    // Faults: a shaded span (or a line) with its label.
    for (i, (start, end, label)) in faults.iter().enumerate() {
        let (x0, x1) = (x(*start), x(end.max(*start)));
        if x1 - x0 > 1.0 {
            let _ = write!(
                svg,
                r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="#f4a261" fill-opacity="0.18"/>"##,
                x1 - x0
            );
        }
        let _ = write!(
            svg,
            r##"<line x1="{x0:.1}" x2="{x0:.1}" y1="{TOP}" y2="{:.1}" stroke="#d62828" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" font-size="10" fill="#d62828">{}</text>"##,
            TOP + plot_h,
            x0 + 3.0,
            TOP + 10.0 + (i % 3) as f64 * 11.0,
            escape(label)
        );
    }
    // Axes and ticks.
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{b}" stroke="#333"/><line x1="{LEFT}" x2="{r}" y1="{b}" y2="{b}" stroke="#333"/>"##,
        b = TOP + plot_h,
        r = LEFT + plot_w
    );
    let mut v = 0.0;
    while v <= y_max + y_step / 2.0 {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{r}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" font-size="10" text-anchor="end">{}</text>"##,
            tick_label(v, y_step),
            r = LEFT + plot_w,
            yy = y(v),
            tx = LEFT - 4.0,
            ty = y(v) + 3.0
        );
        v += y_step;
    }
    let x_step = nice_step(x_max, 10.0);
    let mut s = 0.0;
    while s <= x_max + x_step / 2.0 {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}s</text>"#,
            x(s),
            TOP + plot_h + 14.0,
            tick_label(s, x_step)
        );
        s += x_step;
    }
    // Lines and legend.
    for (i, series) in series.iter().enumerate() {
        let points: Vec<String> = series
            .points
            .iter()
            .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.6" points="{}"/>"#,
            series.colour,
            points.join(" ")
        );
        let lx = LEFT + plot_w - 150.0;
        let ly = TOP + 12.0 + i as f64 * 13.0;
        let _ = write!(
            svg,
            r#"<rect x="{lx}" y="{:.1}" width="10" height="3" fill="{c}"/><text x="{:.1}" y="{ly:.1}" font-size="10">{}</text>"#,
            ly - 3.0,
            lx + 14.0,
            escape(series.name),
            c = series.colour
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Per whole second: (count, p50, p99) of the values whose time falls in it.
fn per_second(events: impl Iterator<Item = (u64, f64)>, seconds: usize) -> Vec<(usize, f64, f64)> {
    let mut buckets: Vec<Vec<f64>> = vec![Vec::new(); seconds + 1];
    for (at_ms, value) in events {
        let second = (at_ms / 1000) as usize;
        if let Some(bucket) = buckets.get_mut(second) {
            bucket.push(value);
        }
    }
    buckets
        .into_iter()
        .map(|mut b| {
            b.sort_by(f64::total_cmp);
            let pct = |p: f64| {
                if b.is_empty() {
                    0.0
                } else {
                    b[((b.len() - 1) as f64 * p).round() as usize]
                }
            };
            (b.len(), pct(0.5), pct(0.99))
        })
        .collect()
}

/// The whole page.
pub fn render(
    history: &History,
    verdicts: &[Verdict],
    failovers: &[Failover],
    title: &str,
) -> String {
    let duration_s = history.duration_ms as f64 / 1000.0;
    let seconds = (history.duration_ms / 1000) as usize;
    let faults = fault_spans(history);
    let writes = per_second(
        history.writes.iter().map(|w| (w.at_ms, w.latency_ms)),
        seconds,
    );
    let predictions = per_second(
        history.predictions.iter().map(|p| (p.at_ms, p.latency_ms)),
        seconds,
    );
    let failures = per_second(history.failures.iter().map(|f| (f.at_ms, 0.0)), seconds);
    let at = |i: usize| i as f64 + 0.5;
    let throughput = chart(
        "Throughput",
        "per second",
        &[
            Series {
                name: "acknowledged writes",
                colour: "#1d3557",
                points: writes
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (at(i), b.0 as f64))
                    .collect(),
            },
            Series {
                name: "failed writes",
                colour: "#e63946",
                points: failures
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (at(i), b.0 as f64))
                    .collect(),
            },
            Series {
                name: "predictions",
                colour: "#2a9d8f",
                points: predictions
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (at(i), b.0 as f64))
                    .collect(),
            },
        ],
        duration_s,
        &faults,
    );
    let latency = chart(
        "Write latency",
        "ms, acknowledged writes",
        &[
            Series {
                name: "p50",
                colour: "#457b9d",
                points: writes
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.0 > 0)
                    .map(|(i, b)| (at(i), b.1))
                    .collect(),
            },
            Series {
                name: "p99",
                colour: "#e76f51",
                points: writes
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.0 > 0)
                    .map(|(i, b)| (at(i), b.2))
                    .collect(),
            },
        ],
        duration_s,
        &faults,
    );
    let lag_points = |pick: fn(&PrimaryStatus) -> u64| {
        history
            .samples
            .iter()
            .filter_map(|s| {
                s.status
                    .as_ref()
                    .map(|l| (s.at_ms as f64 / 1000.0, pick(l) as f64))
            })
            .collect()
    };
    let lag = chart(
        "Replication lag",
        "the primary's own report",
        &[
            Series {
                name: "lag (entries)",
                colour: "#6a4c93",
                points: lag_points(|l| l.lag_entries),
            },
            Series {
                name: "lag (ms / 100)",
                colour: "#8ab17d",
                points: lag_points(|l| l.lag_ms / 100),
            },
        ],
        duration_s,
        &faults,
    );

    let mut page = String::new();
    let failed = verdicts
        .iter()
        .filter(|v| v.outcome == Outcome::Fail)
        .count();
    let _ = write!(
        page,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{t}</title><style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:1em auto;padding:0 1em;color:#222}}table{{border-collapse:collapse;width:100%;margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;font-size:14px}}.Pass{{color:#2a7d2a;font-weight:bold}}.Fail{{color:#c1121f;font-weight:bold}}.Skip{{color:#777}}</style></head><body><h1>{t}</h1>"#,
        t = escape(title)
    );
    let _ = write!(
        page,
        "<p><strong>{}</strong> — {} mode, {:.1} s, {} acknowledged writes, {} failed, {} predictions, {} faults.</p>",
        match failed {
            0 => "PASS".to_owned(),
            n => format!("FAIL: {n} invariant(s) violated"),
        },
        escape(&history.replication),
        duration_s,
        history.writes.len(),
        history.failures.len(),
        history.predictions.len(),
        history.faults.len()
    );
    page.push_str(
        "<h2>Verdict</h2><table><tr><th>Invariant</th><th>Result</th><th>Evidence</th></tr>",
    );
    for v in verdicts {
        let _ = write!(
            page,
            r#"<tr><td>{}</td><td class="{:?}">{:?}</td><td>{}</td></tr>"#,
            escape(v.invariant),
            v.outcome,
            v.outcome,
            escape(&v.detail)
        );
    }
    page.push_str("</table><h2>Timeline</h2>");
    page.push_str(&throughput);
    page.push_str(&latency);
    page.push_str(&lag);
    page.push_str("<h2>Failovers</h2><table><tr><th>Fault</th><th>At</th><th>Term</th><th>RTO (fault → ack of the first write sent after it)</th></tr>");
    for f in failovers {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{:.1} s</td><td>{} → {}</td><td>{}</td></tr>",
            escape(&f.fault),
            f.fault_at_ms as f64 / 1000.0,
            f.from_term,
            f.to_term.map_or("?".into(), |t| t.to_string()),
            f.rto_ms
                .map_or("no write acknowledged after it".into(), |ms| format!(
                    "{ms} ms"
                ))
        );
    }
    page.push_str("</table><h2>Faults applied</h2><table><tr><th>At</th><th>Fault</th><th>Action</th><th>Child</th><th>Result</th></tr>");
    for f in &history.faults {
        let _ = write!(
            page,
            "<tr><td>{:.1} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            f.at_ms as f64 / 1000.0,
            escape(&f.fault),
            escape(&f.action),
            escape(&f.target),
            escape(f.error.as_deref().unwrap_or("ok"))
        );
    }
    page.push_str("</table></body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Axis labels never repeat, whatever the range (the stake chart's old complaint).
    #[test]
    fn tick_labels_are_distinct() {
        for max in [0.3, 1.0, 7.0, 42.0, 1001.0, 123_456.0] {
            let step = nice_step(max, 4.0);
            let labels: Vec<String> = (0..6).map(|i| tick_label(i as f64 * step, step)).collect();
            let mut unique = labels.clone();
            unique.dedup();
            assert_eq!(labels, unique, "max {max}");
        }
    }

    /// The page is self-contained: SVG inline, no script, nothing fetched; text escaped.
    #[test]
    fn page_is_self_contained() {
        let history = History {
            replication: "sync".into(),
            duration_ms: 3000,
            ..History::default()
        };
        let verdicts = vec![Verdict {
            invariant: "x",
            outcome: Outcome::Fail,
            detail: "<b>".into(),
        }];
        let page = render(&history, &verdicts, &[], "chaos");
        assert!(page.contains("<svg"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("src="));
        assert!(page.contains("&lt;b&gt;"));
    }
}
