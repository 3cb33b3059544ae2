//! Charts drawn as plain SVG by the app: a line chart with error bars (win-rate against labels
//! used, one series per acquisition function) and a histogram (acquisition scores). No chart
//! library: these two shapes are all the dashboard needs, and SVG keeps them crisp and small.
//! A point that is known rather than measured (the starting model at 0 labels) is drawn hollow
//! with a dashed segment and named in the legend, so a reader never takes it for data.

use leptos::prelude::*;

/// One point: x, y, the half-width of its error bar, what it is and whether it was measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub err: f64,
    /// What the point stands for ("round 2", "starting model"), named in its tooltip.
    pub label: String,
    pub mark: Mark,
}

/// Whether a point was measured, or stands for a value known without measuring it.
#[derive(Debug, Clone, PartialEq)]
pub enum Mark {
    Measured,
    /// Not measured, for the reason given (in its tooltip and the legend): drawn hollow and
    /// joined to its neighbour by a dashed line, so it never passes for data.
    Assumed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

const W: f64 = 640.0;
const H: f64 = 320.0;
const L: f64 = 56.0; // left margin (y labels)
const R: f64 = 16.0;
const T: f64 = 16.0;
const B: f64 = 44.0; // bottom margin (x labels)
const COLOURS: [&str; 6] = ["#0b5fcc", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490"];

/// "Nice" tick values covering [lo, hi].
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= n as f64).unwrap_or(raw);
    let first = (lo / step).ceil() * step;
    (0..=n * 2).map(|i| first + i as f64 * step).take_while(|v| *v <= hi + 1e-9).collect()
}

fn label(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract().abs() < 1e-9 { format!("{v:.0}") } else { format!("{v:.2}") }
}

/// Horizontal grid lines with their labels at `values` (y scaled by `sy`).
fn y_grid(values: Vec<f64>, sy: impl Fn(f64) -> f64) -> impl IntoView {
    values
        .into_iter()
        .map(|v| {
            view! {
                <line x1=L x2=W - R y1=sy(v) y2=sy(v) class="grid"/>
                <text x=L - 6.0 y=sy(v) + 4.0 text-anchor="end" class="tick">{label(v)}</text>
            }
        })
        .collect_view()
}

/// Win-rate style chart: y from 0 to 1 unless the data leave it; a dashed line at `reference`.
#[component]
pub fn LineChart(
    series: Vec<Series>,
    #[prop(into)] x_label: String,
    #[prop(into)] y_label: String,
    #[prop(into)] title: String,
    #[prop(optional)] reference: Option<f64>,
) -> impl IntoView {
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.x), b.max(p.x)));
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    // Labels used start from none: the axis shows where the curve starts.
    x0 = x0.min(0.0);
    if x1 - x0 < 1e-9 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let (mut y0, mut y1) = (0.0f64, 1.0f64);
    for p in pts() {
        y0 = y0.min(p.y - p.err);
        y1 = y1.max(p.y + p.err);
    }
    let sx = move |x: f64| L + (x - x0) / (x1 - x0) * (W - L - R);
    let sy = move |y: f64| T + (1.0 - (y - y0) / (y1 - y0)) * (H - T - B);
    let grid = y_grid(ticks(y0, y1, 5), sy);
    let xt = ticks(x0, x1, 6)
        .into_iter()
        .map(|v| view! { <text x=sx(v) y=H - B + 16.0 text-anchor="middle" class="tick">{label(v)}</text> })
        .collect_view();
    let refline = reference.map(|r| {
        view! { <line x1=L x2=W - R y1=sy(r) y2=sy(r) class="refline"/> }
    });
    let lines = series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let c = COLOURS[i % COLOURS.len()];
            let mut ps = s.points.clone();
            ps.sort_by(|a, b| a.x.total_cmp(&b.x));
            // Measured points joined by a solid line; a segment to an assumed one is dashed.
            let segments = ps
                .windows(2)
                .map(|w| {
                    let assumed = w.iter().any(|p| p.mark != Mark::Measured);
                    view! {
                        <line x1=sx(w[0].x) y1=sy(w[0].y) x2=sx(w[1].x) y2=sy(w[1].y) stroke=c stroke-width="2"
                            stroke-linecap="round" class:assumed=assumed/>
                    }
                })
                .collect_view();
            let marks = ps
                .iter()
                .map(|p| {
                    let (x, y) = (sx(p.x), sy(p.y));
                    let (tip, fill, mark) = match &p.mark {
                        Mark::Measured => (
                            format!("{} · {}: {} labels, {:.3} ± {:.3}", s.name, p.label, p.x, p.y, p.err),
                            c,
                            "measured",
                        ),
                        Mark::Assumed(why) => (format!("{} · {why}", s.name), "#fff", "assumed"),
                    };
                    let bars = (p.err > 0.0).then(|| {
                        view! {
                            <line x1=x x2=x y1=sy(p.y - p.err) y2=sy(p.y + p.err) stroke=c class="errbar"/>
                            <line x1=x - 4.0 x2=x + 4.0 y1=sy(p.y - p.err) y2=sy(p.y - p.err) stroke=c class="errbar"/>
                            <line x1=x - 4.0 x2=x + 4.0 y1=sy(p.y + p.err) y2=sy(p.y + p.err) stroke=c class="errbar"/>
                        }
                    });
                    view! {
                        {bars}
                        <circle cx=x cy=y r="4" fill=fill stroke=c stroke-width="2" data-x=p.x.to_string() data-mark=mark>
                            <title>{tip}</title>
                        </circle>
                    }
                })
                .collect_view();
            view! { {segments} {marks} }
        })
        .collect_view();
    // Each reason for an unmeasured point, once, beside a hollow mark like the chart's.
    let mut assumed: Vec<&str> = Vec::new();
    for p in pts() {
        if let Mark::Assumed(why) = &p.mark
            && !assumed.contains(&why.as_str())
        {
            assumed.push(why);
        }
    }
    let notes = assumed
        .into_iter()
        .map(|why| {
            view! {
                <li class="assumed-note">
                    <svg class="swatch" viewBox="0 0 12 12" aria-hidden="true">
                        <circle cx="6" cy="6" r="4" fill="#fff" stroke="currentColor" stroke-width="2"/>
                    </svg>
                    {why.to_string()}
                </li>
            }
        })
        .collect_view();
    let legend = series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let c = COLOURS[i % COLOURS.len()];
            view! {
                <li>
                    <svg class="swatch" viewBox="0 0 12 12" aria-hidden="true"><rect width="12" height="12" fill=c/></svg>
                    {s.name.clone()}
                </li>
            }
        })
        .collect_view();
    view! {
        <figure class="chart">
            <svg viewBox=format!("0 0 {W} {H}") role="img" aria-label=title.clone()>
                <title>{title.clone()}</title>
                {grid}
                {refline}
                <line x1=L x2=W - R y1=H - B y2=H - B class="axis"/>
                <line x1=L x2=L y1=T y2=H - B class="axis"/>
                {xt}
                <text x=(L + W - R) / 2.0 y=H - 6.0 text-anchor="middle" class="axis-label">{x_label}</text>
                <text x=14 y=(T + H - B) / 2.0 text-anchor="middle" class="axis-label"
                    transform=format!("rotate(-90 14 {})", (T + H - B) / 2.0)>{y_label}</text>
                {lines}
            </svg>
            <figcaption><ul class="legend">{legend}{notes}</ul></figcaption>
        </figure>
    }
}

/// Counts of `values` in `bins` equal-width bins.
pub fn bin(values: &[f64], bins: usize) -> (f64, f64, Vec<usize>) {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if finite.is_empty() {
        return (0.0, 1.0, vec![0; bins]);
    }
    let (lo, hi) = if hi - lo < 1e-12 { (lo - 0.5, hi + 0.5) } else { (lo, hi) };
    let mut counts = vec![0usize; bins];
    for v in finite {
        let i = (((v - lo) / (hi - lo)) * bins as f64).floor() as usize;
        counts[i.min(bins - 1)] += 1;
    }
    (lo, hi, counts)
}

/// A histogram of `values`, with the `highlight` values (e.g. the pairs kept) drawn over it.
#[component]
pub fn Histogram(
    values: Vec<f64>,
    #[prop(optional)] highlight: Vec<f64>,
    #[prop(into)] x_label: String,
    #[prop(into)] title: String,
) -> impl IntoView {
    const BINS: usize = 24;
    let (lo, hi, counts) = bin(&values, BINS);
    let mut hl = [0usize; BINS];
    for v in highlight.iter().filter(|v| v.is_finite()) {
        let i = (((v - lo) / (hi - lo)) * BINS as f64).floor();
        if i >= 0.0 {
            hl[(i as usize).min(BINS - 1)] += 1;
        }
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let bw = (W - L - R) / BINS as f64;
    let sy = move |c: f64| T + (1.0 - c / top) * (H - T - B);
    let bars = (0..BINS)
        .map(|i| {
            let x = L + i as f64 * bw;
            let (a, b) = (lo + (hi - lo) * i as f64 / BINS as f64, lo + (hi - lo) * (i + 1) as f64 / BINS as f64);
            let tip = format!("{:.3} to {:.3}: {} candidates, {} kept", a, b, counts[i], hl[i]);
            view! {
                <rect x=x + 1.0 y=sy(counts[i] as f64) width=bw - 2.0 height=(H - B) - sy(counts[i] as f64) class="bar">
                    <title>{tip}</title>
                </rect>
                <rect x=x + 1.0 y=sy(hl[i] as f64) width=bw - 2.0 height=(H - B) - sy(hl[i] as f64) class="bar kept"/>
            }
        })
        .collect_view();
    let yt = y_grid(ticks(0.0, top, 4), sy);
    let xt = ticks(lo, hi, 6)
        .into_iter()
        .map(|v| {
            let x = L + (v - lo) / (hi - lo) * (W - L - R);
            view! { <text x=x y=H - B + 16.0 text-anchor="middle" class="tick">{label(v)}</text> }
        })
        .collect_view();
    let n = values.len();
    let kept = highlight.len();
    view! {
        <figure class="chart">
            <svg viewBox=format!("0 0 {W} {H}") role="img" aria-label=title.clone()>
                <title>{title.clone()}</title>
                {yt}
                {bars}
                <line x1=L x2=W - R y1=H - B y2=H - B class="axis"/>
                {xt}
                <text x=(L + W - R) / 2.0 y=H - 6.0 text-anchor="middle" class="axis-label">{x_label}</text>
            </svg>
            <figcaption>
                <ul class="legend">
                    <li><span class="swatch bar-swatch"></span>{format!("{n} candidates")}</li>
                    <li><span class="swatch kept-swatch"></span>{format!("{kept} acquired")}</li>
                </ul>
            </figcaption>
        </figure>
    }
}
