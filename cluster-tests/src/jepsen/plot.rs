//! The picture people look at first in a Jepsen report: throughput and latency of successful
//! operations over time, with the fault periods shaded.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::history::{Op, OpType, CLIENT_PROCESSES};
use super::runner::NEMESIS_PROCESS;

/// A font Debian ships in `fonts-dejavu-core`.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const CLIENT_FUNCTIONS: [&str; 4] = ["read", "cas", "append", "create"];
const FAULT_FILL: RGBColor = RGBColor(255, 205, 205);

/// (seconds, value) points of one line.
type Points = Vec<(f64, f64)>;

/// Per second: ok operations, and p50 / p99 latency in ms of those that completed then.
fn series(ops: &[Op]) -> (Points, Points, Points) {
    let mut invoked: HashMap<u64, u64> = HashMap::new();
    let mut per_second: Vec<Vec<f64>> = Vec::new();
    // The clients' operations only: not the final reads, which sit above them with the nemesis.
    for op in ops
        .iter()
        .filter(|o| CLIENT_FUNCTIONS.contains(&o.f.as_str()) && o.process < CLIENT_PROCESSES)
    {
        match op.kind {
            OpType::Invoke => {
                invoked.insert(op.process, op.time);
            }
            OpType::Ok => {
                if let Some(t0) = invoked.remove(&op.process) {
                    let sec = (op.time / 1_000_000_000) as usize;
                    if per_second.len() <= sec {
                        per_second.resize(sec + 1, Vec::new());
                    }
                    per_second[sec].push((op.time - t0) as f64 / 1e6);
                }
            }
            _ => {
                invoked.remove(&op.process);
            }
        }
    }
    let mut tput = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for (sec, lat) in per_second.iter_mut().enumerate() {
        let x = sec as f64 + 0.5;
        tput.push((x, lat.len() as f64));
        if lat.is_empty() {
            continue;
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
        p50.push((x, q(0.50)));
        p99.push((x, q(0.99)));
    }
    (tput, p50, p99)
}

/// Fault periods in seconds: from each injected fault to the heal after it.
fn fault_periods(ops: &[Op]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut start = None;
    for op in ops
        .iter()
        .filter(|o| o.process == NEMESIS_PROCESS && o.kind == OpType::Ok)
    {
        let t = op.time as f64 / 1e9;
        if op.f == "heal" {
            if let Some(s) = start.take() {
                out.push((s, t));
            }
        } else if op.f != "heal-write" {
            start = Some(t);
        }
    }
    out
}

/// Makes [`FONT`] plotters' "sans-serif" (once per process).
pub fn register_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    let font = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (Debian package fonts-dejavu-core)"))?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
    let _ = DONE.set(());
    Ok(())
}

/// Draws `ops` to a PNG at `path`.
pub fn plot(ops: &[Op], title: &str, path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let (tput, p50, p99) = series(ops);
    let faults = fault_periods(ops);
    let end = tput.last().map(|p| p.0 + 0.5).unwrap_or(1.0);
    let max_tput = tput.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let max_lat = p99.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;

    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 26))?;
    let (top, bottom) = root.split_vertically(390);
    let draw = |area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
                y_max: f64,
                y_label: &str,
                lines: &[(&str, &Points, RGBColor)]|
     -> anyhow::Result<()> {
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..end, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(y_label)
            .label_style(("sans-serif", 15))
            .draw()?;
        chart
            .draw_series(
                faults
                    .iter()
                    .map(|(a, b)| Rectangle::new([(*a, 0.0), (*b, y_max)], FAULT_FILL.filled())),
            )?
            .label("fault")
            .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], FAULT_FILL.filled()));
        for (name, points, color) in lines {
            let color = *color;
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()?;
        Ok(())
    };
    draw(
        &top,
        max_tput,
        "ok operations / s",
        &[("throughput", &tput, BLUE)],
    )?;
    draw(
        &bottom,
        max_lat,
        "latency (ms)",
        &[("p50", &p50, RGBColor(0, 140, 0)), ("p99", &p99, RED)],
    )?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::jepsen::runner::FINAL_READ_PROCESS;

    fn op(process: u64, kind: OpType, f: &str, secs: f64) -> Op {
        Op {
            index: 0,
            process,
            kind,
            f: f.into(),
            key: String::new(),
            value: Value::Null,
            time: (secs * 1e9) as u64,
            node: 0,
        }
    }

    #[test]
    fn faults_are_the_nemesis_periods_and_throughput_counts_only_clients() {
        let ops = vec![
            op(7, OpType::Invoke, "cas", 0.1),
            op(7, OpType::Ok, "cas", 0.2),
            op(NEMESIS_PROCESS, OpType::Invoke, "kill", 1.0),
            op(NEMESIS_PROCESS, OpType::Ok, "kill", 1.5),
            op(NEMESIS_PROCESS, OpType::Invoke, "heal", 4.0),
            op(NEMESIS_PROCESS, OpType::Ok, "heal", 4.5),
            op(NEMESIS_PROCESS, OpType::Ok, "heal-write", 4.6),
            op(FINAL_READ_PROCESS + 1, OpType::Invoke, "read", 5.1),
            op(FINAL_READ_PROCESS + 1, OpType::Ok, "read", 5.2),
        ];
        assert_eq!(fault_periods(&ops), vec![(1.5, 4.5)]);
        let (tput, p50, _) = series(&ops);
        assert_eq!(tput, vec![(0.5, 1.0)], "the final read is not a client's");
        assert_eq!(p50.len(), 1);
        assert!((p50[0].1 - 100.0).abs() < 1e-6, "{p50:?}");
    }
}
