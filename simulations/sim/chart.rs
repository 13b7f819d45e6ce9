//! SVG charts of a sweep: scaling curves against size.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

/// One chart: x and y of each series, log-scaled x.
pub(crate) struct Chart<'a> {
    pub file: &'a str,
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

pub(crate) fn draw(dir: &Path, c: &Chart) -> Result<(), String> {
    let path = dir.join(c.file);
    let points = c.series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for (x, y) in points {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        return Ok(());
    }
    let (x0, x1) = (x0 * 0.8, x1 * 1.25);
    let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
    let root = SVGBackend::new(&path, (720, 440)).into_drawing_area();
    let e = |e: &dyn std::fmt::Display| format!("chart {}: {e}", c.file);
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(c.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x0..x1).log_scale(), 0.0..y1)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(c.x_label)
        .y_desc(c.y_label)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (name, pts)) in c.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Groups `(key, x, y)` into one series per key, sorted by x.
fn series(
    rs: &[Report],
    key: impl Fn(&Report) -> String,
    xy: impl Fn(&Report) -> (f64, f64),
) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in rs {
        let k = key(r);
        let p = xy(r);
        match out.iter_mut().find(|(name, _)| *name == k) {
            Some((_, pts)) => pts.push(p),
            None => out.push((k, vec![p])),
        }
    }
    for (_, pts) in &mut out {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// What a chart's x axis is; the other size names its series.
#[derive(Clone, Copy)]
enum Against {
    Peers,
    Hosts,
}

/// A chart: file, title, x axis, y label and the y of a run.
type Spec = (
    &'static str,
    &'static str,
    Against,
    &'static str,
    fn(&Report) -> f64,
);

// One chart a line, as a table reads.
#[rustfmt::skip]
const CHARTS: [Spec; 7] = [
    ("register.svg", "Time to register every peer", Against::Peers, "seconds", |r| r.register_s),
    ("find.svg", "find latency, 99th percentile", Against::Hosts, "milliseconds", |r| r.find_p99_ms),
    ("memory.svg", "Process RSS at the end of the run", Against::Peers, "MiB", mib),
    ("register-hosts.svg", "Time to register every peer", Against::Hosts, "seconds", |r| r.register_s),
    ("memory-hosts.svg", "Process RSS at the end of the run", Against::Hosts, "MiB", mib),
    ("join.svg", "Join (one by one) until every host knows all", Against::Hosts, "seconds", |r| r.join_s),
    ("idle.svg", "Idle CPU of all hosts once joined", Against::Hosts, "cores", |r| r.idle_cpu_cores),
];

fn mib(r: &Report) -> f64 {
    r.rss_bytes as f64 / 1048576.0
}

/// Draws registration time, find latency and memory against size, and
/// each of them, the join and the idle cost against the host count.
pub(crate) fn draw_all(rs: &[Report], dir: &Path) -> Result<(), String> {
    for (file, title, against, y_label, y) in CHARTS {
        type Name = fn(&Report) -> String;
        let (x_label, name, x): (&str, Name, fn(&Report) -> f64) = match against {
            Against::Peers => (
                "peers",
                |r| format!("{} hosts", r.hosts),
                |r| r.peers as f64,
            ),
            Against::Hosts => (
                "hosts",
                |r| format!("{} peers", r.peers),
                |r| r.hosts as f64,
            ),
        };
        let series = series(rs, name, |r| (x(r), y(r)));
        draw(
            dir,
            &Chart {
                file,
                title,
                x_label,
                y_label,
                series,
            },
        )?;
    }
    Ok(())
}
