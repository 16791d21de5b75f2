//! Bar charts as server-side SVG (no script, so the strict Content-Security-Policy holds): a
//! full time axis with one bar per bucket (zero buckets included), labelled axes with a rounded
//! scale, hover values as SVG `<title>`s, and bars stacked by series (status class, token kind)
//! or overlaid (p50 inside p95).

use maud::{html, Markup};

/// One series of a chart: its name (legend and hover text), its CSS class and one value per
/// bucket.
pub struct Series<'a> {
    pub name: &'a str,
    pub class: &'a str,
    pub values: Vec<f64>,
}

/// How several series share a bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Stacked: the bar is the sum of the series.
    Stack,
    /// Overlaid: each series is drawn from zero, later ones narrower (p50 inside p95).
    Overlay,
}

/// A chart's description.
pub struct Chart<'a> {
    pub id: &'a str,
    pub title: &'a str,
    /// The y axis' label (the unit).
    pub y_label: &'a str,
    /// The x axis' label (`Hour (UTC)`, `Day (UTC)`).
    pub x_label: &'a str,
    /// The full label of each bucket (hover text) and its short tick label.
    pub buckets: &'a [(String, String)],
    pub series: Vec<Series<'a>>,
    pub mode: Mode,
    /// Whole numbers (counts): the scale's ticks are whole numbers too.
    pub integer: bool,
    pub fmt: &'a dyn Fn(f64) -> String,
}

const W: f64 = 480.0;
const H: f64 = 230.0;
const LEFT: f64 = 86.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 40.0;

/// The smallest "nice" number (1, 2, 2.5 or 5 times a power of ten) at or above `v`; with
/// `integer`, a whole number (1 to 5 below ten, at least 1).
pub fn nice_ceiling(v: f64, integer: bool) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    let steps: &[f64] = if integer && p < 10.0 {
        &[1.0, 2.0, 3.0, 4.0, 5.0, 10.0]
    } else {
        &[1.0, 2.0, 2.5, 5.0, 10.0]
    };
    for m in steps {
        if m * p >= v * (1.0 - 1e-9) {
            return (m * p).max(if integer { 1.0 } else { 0.0 });
        }
    }
    10.0 * p
}

fn f2(v: f64) -> String {
    format!("{v:.2}")
}

/// The chart: a `figure` with the SVG, its legend and a text summary.
pub fn render(c: &Chart<'_>) -> Markup {
    let n = c.buckets.len();
    let value = |s: &Series<'_>, i: usize| s.values.get(i).copied().unwrap_or(0.0).max(0.0);
    let height_of = |i: usize| -> f64 {
        match c.mode {
            Mode::Stack => c.series.iter().map(|s| value(s, i)).sum(),
            Mode::Overlay => c.series.iter().map(|s| value(s, i)).fold(0.0, f64::max),
        }
    };
    // The non-empty segments of bucket `i`, bottom first: (class, base, value).
    let stacked = |i: usize| -> Vec<(&str, f64, f64)> {
        let mut base = 0.0;
        let mut out = Vec::new();
        for s in &c.series {
            let v = value(s, i);
            if v > 0.0 {
                out.push((s.class, base, v));
            }
            base += v;
        }
        out
    };
    let peak = (0..n).map(height_of).fold(0.0, f64::max);
    // Four equal steps up to the top of the scale.
    let top = 4.0 * nice_ceiling(peak / 4.0, c.integer);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let slot = plot_w / n.max(1) as f64;
    let y = |v: f64| TOP + plot_h - (v / top) * plot_h;
    // At most about 8 tick labels on the time axis.
    let every = n.div_ceil(8).max(1);
    let summary = format!(
        "{}: {n} buckets{}, peak {}",
        c.title,
        match (c.buckets.first(), c.buckets.last()) {
            (Some(a), Some(b)) => format!(" from {} to {}", a.0, b.0),
            _ => String::new(),
        },
        (c.fmt)(peak)
    );
    html! {
        figure.chart id=(c.id) data-buckets=(n) {
            figcaption { (c.title) " " span.muted { "peak " ((c.fmt)(peak)) } }
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(summary) {
                // The y axis: gridlines and labels at 0, ¼, ½, ¾ and the top of the scale.
                g.yaxis {
                    @for k in 0..=4 {
                        @let v = top * k as f64 / 4.0;
                        line.grid x1=(LEFT) x2=(W - RIGHT) y1=(f2(y(v))) y2=(f2(y(v))) {}
                        text.tick x=(LEFT - 6.0) y=(f2(y(v) + 4.0)) text-anchor="end" { ((c.fmt)(v)) }
                    }
                    text.axis-label transform=(format!("translate(11 {}) rotate(-90)", f2(TOP + plot_h / 2.0))) text-anchor="middle" { (c.y_label) }
                }
                g.bars {
                    @for (i, (full, _)) in c.buckets.iter().enumerate() {
                        @let x = LEFT + i as f64 * slot;
                        g.bar data-bucket=(full) {
                            title {
                                (full) ": " ((c.fmt)(height_of(i)))
                                @if c.series.len() > 1 {
                                    @for s in &c.series { " · " (s.name) " " ((c.fmt)(value(s, i))) }
                                }
                            }
                            // The whole slot answers the hover, zero buckets included.
                            rect.hit x=(f2(x)) y=(TOP) width=(f2(slot)) height=(f2(plot_h)) {}
                            @match c.mode {
                                Mode::Stack => {
                                    @for (class, base, v) in stacked(i) {
                                        rect class=(class) x=(f2(x + slot * 0.12)) y=(f2(y(base + v))) width=(f2(slot * 0.76)) height=(f2(y(base) - y(base + v))) {}
                                    }
                                }
                                Mode::Overlay => {
                                    @for (k, s) in c.series.iter().enumerate() {
                                        @let v = value(s, i);
                                        @let inset = slot * (0.12 + 0.14 * k as f64);
                                        @if v > 0.0 {
                                            rect class=(s.class) x=(f2(x + inset)) y=(f2(y(v))) width=(f2((slot - 2.0 * inset).max(0.5))) height=(f2(y(0.0) - y(v))) {}
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                g.xaxis {
                    line.axis x1=(LEFT) x2=(W - RIGHT) y1=(f2(TOP + plot_h)) y2=(f2(TOP + plot_h)) {}
                    @for (i, (_, short)) in c.buckets.iter().enumerate() {
                        @if i % every == 0 {
                            text.tick x=(f2(LEFT + (i as f64 + 0.5) * slot)) y=(f2(TOP + plot_h + 14.0)) text-anchor="middle" { (short) }
                        }
                    }
                    text.axis-label x=(f2(LEFT + plot_w / 2.0)) y=(H - 4.0) text-anchor="middle" { (c.x_label) }
                }
            }
            @if c.series.len() > 1 {
                ul.legend {
                    @for s in &c.series { li { span class=(format!("swatch {}", s.class)) {} (s.name) } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_round_up_to_nice_numbers() {
        assert_eq!(nice_ceiling(0.0, false), 1.0);
        assert_eq!(nice_ceiling(1.0, false), 1.0);
        assert_eq!(nice_ceiling(7.0, false), 10.0);
        assert_eq!(nice_ceiling(13.0, false), 20.0);
        assert_eq!(nice_ceiling(230.0, false), 250.0);
        assert_eq!(nice_ceiling(0.0031, false), 0.005);
        // Counts: whole steps.
        assert_eq!(nice_ceiling(0.25, true), 1.0);
        assert_eq!(nice_ceiling(2.2, true), 3.0);
        assert_eq!(nice_ceiling(23.0, true), 25.0);
    }

    #[test]
    fn one_bar_per_bucket_with_axes_and_hover_values() {
        let buckets: Vec<(String, String)> = (0..24)
            .map(|h| (format!("2026-01-01 {h:02}:00 UTC"), format!("{h:02}:00")))
            .collect();
        let mut ok = vec![0.0; 24];
        let mut bad = vec![0.0; 24];
        ok[3] = 7.0;
        bad[3] = 2.0;
        let num = |v: f64| format!("{v:.0}");
        let svg = render(&Chart {
            id: "c",
            title: "Requests",
            y_label: "requests",
            x_label: "Hour (UTC)",
            buckets: &buckets,
            series: vec![
                Series {
                    name: "2xx",
                    class: "s-2xx",
                    values: ok,
                },
                Series {
                    name: "5xx",
                    class: "s-5xx",
                    values: bad,
                },
            ],
            mode: Mode::Stack,
            integer: true,
            fmt: &num,
        })
        .into_string();
        assert_eq!(svg.matches("<g class=\"bar\"").count(), 24);
        assert!(svg.contains("data-buckets=\"24\""));
        assert!(svg.contains("Hour (UTC)") && svg.contains(">requests</text>"));
        // Scale 0–12 in steps of 3 for a peak of 9; the hover text of the busy hour names both
        // classes.
        for tick in [
            ">0</text>",
            ">3</text>",
            ">6</text>",
            ">9</text>",
            ">12</text>",
        ] {
            assert!(svg.contains(tick), "{tick}");
        }
        assert!(
            svg.contains("<title>2026-01-01 03:00 UTC: 9 · 2xx 7 · 5xx 2</title>"),
            "{svg}"
        );
        assert!(svg.contains("<title>2026-01-01 04:00 UTC: 0 · 2xx 0 · 5xx 0</title>"));
        assert_eq!(svg.matches("class=\"s-2xx\" x=").count(), 1);
        assert!(svg.contains(">00:00</text>") && svg.contains(">03:00</text>"));
    }
}
