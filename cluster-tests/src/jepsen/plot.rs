//! The picture people look at first in a Jepsen report: throughput and latency of successful
//! operations over time, with the fault periods shaded.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::history::{Op, OpType};
use super::runner::FINAL_READ_PROCESS;

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
    for op in ops.iter().filter(|o| {
        CLIENT_FUNCTIONS.contains(&o.f.as_str())
            && !(FINAL_READ_PROCESS + 1..=FINAL_READ_PROCESS + 3).contains(&o.process)
    }) {
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
        .filter(|o| o.process == 1_000_000 && o.kind == OpType::Ok)
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
