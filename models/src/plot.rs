//! SVG plot of file size against KL divergence.
//!
//! A hand-written scatter plot: linear x axis, linear or logarithmic y axis, ticks, grid lines,
//! axis titles, a title and a label beside every point. No plotting crate: the output is plain
//! SVG 1.1 text that any browser renders.

use std::fmt::Write;

/// One labelled point.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub label: String,
    pub x: f64,
    pub y: f64,
}

/// Titles and scales of a scatter plot.
#[derive(Clone, Debug)]
pub struct Scatter {
    pub title: String,
    pub subtitle: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic y axis. Points with y ≤ 0 are drawn hollow on the bottom edge, labelled
    /// "(0)"; points with a non-finite coordinate are left out.
    pub log_y: bool,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 500.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 150.0; // room for the labels of the rightmost points
const TOP: f64 = 70.0;
const BOTTOM: f64 = 60.0;

/// Renders `points` as an SVG document.
pub fn scatter_svg(spec: &Scatter, points: &[Point]) -> String {
    let pts: Vec<&Point> = points.iter().filter(|p| p.x.is_finite() && p.y.is_finite()).collect();
    let (x0, x1) = linear_range(pts.iter().map(|p| p.x));
    let x_ticks = nice_ticks(x0, x1, 6);
    let (x0, x1) = (x0.min(x_ticks[0]), x1.max(x_ticks[x_ticks.len() - 1]));
    let has_zero = spec.log_y && pts.iter().any(|p| p.y <= 0.0);
    // The y axis: [y0, y1] in data units, or in log10 units for a log axis.
    let (y0, y1, y_ticks): (f64, f64, Vec<(f64, String)>) = if spec.log_y {
        let (d0, d1) = log_decades(pts.iter().map(|p| p.y), has_zero);
        let ticks =
            log_ticks(d0, d1).into_iter().map(|(v, major)| (v, if major { fmt_pow10(v) } else { String::new() }));
        (d0 as f64, d1 as f64, ticks.collect())
    } else {
        let (a, b) = linear_range(pts.iter().map(|p| p.y));
        let t = nice_ticks(a, b, 6);
        let (a, b) = (a.min(t[0]), b.max(t[t.len() - 1]));
        let labels = tick_labels(&t);
        (a, b, t.into_iter().zip(labels).collect())
    };
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let y_unit = |y: f64| {
        if spec.log_y {
            if y > 0.0 {
                y.log10()
            } else {
                y0
            }
        } else {
            y
        }
    };
    let sy = |y: f64| TOP + ph - (y_unit(y) - y0) / (y1 - y0) * ph;
    let sy_axis = |v: f64| TOP + ph - (v - y0) / (y1 - y0) * ph; // v already in axis units

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="28" text-anchor="middle" font-size="17" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(&spec.title)
    );
    if !spec.subtitle.is_empty() {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="48" text-anchor="middle" font-size="12" fill="#555">{}</text>"##,
            WIDTH / 2.0,
            escape(&spec.subtitle)
        );
    }
    // Grid and ticks.
    let _ = writeln!(s, r##"<g stroke="#ddd" stroke-width="1">"##);
    for &t in &x_ticks {
        let _ = writeln!(s, r#"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}"/>"#, sx(t), TOP, TOP + ph);
    }
    for (v, label) in &y_ticks {
        let dash = if label.is_empty() { r#" stroke-dasharray="2,3""# } else { "" };
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{x2:.1}" y2="{y:.1}"{dash}/>"#,
            y = sy_axis(*v),
            x2 = LEFT + pw
        );
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, r#"<g stroke="black" stroke-width="1" fill="none">"#);
    let _ = writeln!(s, r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}"/>"#);
    for &t in &x_ticks {
        let _ =
            writeln!(s, r#"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}"/>"#, sx(t), TOP + ph, TOP + ph + 5.0);
    }
    for (v, label) in &y_ticks {
        let len = if label.is_empty() { 3.0 } else { 5.0 };
        let _ = writeln!(
            s,
            r#"<line x1="{x1:.1}" y1="{y:.1}" x2="{LEFT}" y2="{y:.1}"/>"#,
            x1 = LEFT - len,
            y = sy_axis(*v)
        );
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, r#"<g font-size="12" fill="black">"#);
    for (t, label) in x_ticks.iter().zip(tick_labels(&x_ticks)) {
        let _ =
            writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#, sx(*t), TOP + ph + 19.0);
    }
    for (v, label) in y_ticks.iter().filter(|(_, l)| !l.is_empty()) {
        let _ =
            writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#, LEFT - 8.0, sy_axis(*v) + 4.0);
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13">{}</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 15.0,
        escape(&spec.x_label)
    );
    let (yx, yy) = (22.0, TOP + ph / 2.0);
    let _ = writeln!(
        s,
        r#"<text x="{yx}" y="{yy:.1}" text-anchor="middle" font-size="13" transform="rotate(-90 {yx} {yy:.1})">{}</text>"#,
        escape(&spec.y_label)
    );
    // Points and labels.
    let _ = writeln!(s, r#"<g font-size="11">"#);
    for p in &pts {
        let (cx, cy) = (sx(p.x), sy(p.y));
        let zero = spec.log_y && p.y <= 0.0;
        let fill = if zero { "white" } else { "#1f77b4" };
        let _ = writeln!(
            s,
            r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="4.5" fill="{fill}" stroke="#1f77b4" stroke-width="1.5"/>"##
        );
        let label = if zero { format!("{} (0)", p.label) } else { p.label.clone() };
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, cx + 7.0, cy - 6.0, escape(&label));
    }
    let _ = writeln!(s, "</g>");
    if pts.is_empty() {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13" fill="#888">no data</text>"##,
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The span of `values`, padded by 8 % on each side (a unit span around a single value).
fn linear_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.08 } else { (lo.abs() * 0.1).max(0.5) };
    (lo - pad, hi + pad)
}

/// Whole decades covering the positive `values` (one decade below them when `has_zero`, for
/// the zero points to sit on the bottom edge).
fn log_decades(values: impl Iterator<Item = f64>, has_zero: bool) -> (i32, i32) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|&v| v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (-6, -4);
    }
    let mut d0 = lo.log10().floor() as i32;
    let mut d1 = hi.log10().ceil() as i32;
    if d1 <= d0 {
        d1 = d0 + 1;
    }
    if has_zero {
        d0 -= 1;
    }
    if d1 - d0 < 2 {
        // A plot one decade high looks flat: show a little room above.
        d1 += 1;
    }
    (d0, d1)
}

/// Ticks of a log axis from 10^d0 to 10^d1, in log10 units: (position, is a decade). Between
/// decades, 2× and 5× minor ticks when the axis spans few decades.
pub fn log_ticks(d0: i32, d1: i32) -> Vec<(f64, bool)> {
    let mut t = Vec::new();
    for d in d0..=d1 {
        t.push((d as f64, true));
        if d < d1 && d1 - d0 <= 4 {
            for m in [2.0f64, 5.0] {
                t.push((d as f64 + m.log10(), false));
            }
        }
    }
    t
}

/// "1e-5" style label of 10^v (plain decimals from 0.001 to 1000).
fn fmt_pow10(v: f64) -> String {
    let d = v.round() as i32;
    match d {
        -3..=-1 => format!("{:.*}", (-d) as usize, 10f64.powi(d)),
        0..=3 => format!("{}", 10i64.pow(d as u32)),
        _ => format!("1e{d}"),
    }
}

/// Round tick values (steps of 1, 2 or 5 × 10^k) covering [lo, hi], about `target` of them.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        let v = if lo.is_finite() { lo } else { 0.0 };
        return vec![v];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|&s| s >= raw * (1.0 - 1e-9)).unwrap_or(10.0 * mag);
    let first = (lo / step + 1e-9).floor() as i64;
    let last = (hi / step - 1e-9).ceil() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Labels for evenly spaced ticks, with as many decimals as the step needs.
fn tick_labels(ticks: &[f64]) -> Vec<String> {
    let step = if ticks.len() > 1 { ticks[1] - ticks[0] } else { 1.0 };
    let decimals = if step > 0.0 { (-(step.log10() - 1e-9).floor()).max(0.0) as usize } else { 0 };
    ticks
        .iter()
        .map(|&t| {
            let s = format!("{t:.decimals$}");
            if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
                s[1..].to_string()
            } else {
                s
            }
        })
        .collect()
}

/// Escapes text for SVG element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(log_y: bool) -> Scatter {
        Scatter {
            title: "Size vs KLD".into(),
            subtitle: "against base".into(),
            x_label: "file size (MiB)".into(),
            y_label: "mean KLD".into(),
            log_y,
        }
    }

    fn pt(label: &str, x: f64, y: f64) -> Point {
        Point { label: label.into(), x, y }
    }

    /// The (cx, cy) of every circle in `svg`.
    fn circles(svg: &str) -> Vec<(f64, f64)> {
        let attr = |s: &str, name: &str| -> f64 {
            let i = s.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            s[i..i + s[i..].find('"').unwrap()].parse().unwrap()
        };
        svg.lines().filter(|l| l.starts_with("<circle")).map(|l| (attr(l, "cx"), attr(l, "cy"))).collect()
    }

    #[test]
    fn nice_ticks_are_round_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = nice_ticks(0.3, 0.9, 6);
        assert_eq!(t.len(), 7, "{t:?}");
        assert!(t.iter().zip([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]).all(|(a, b)| (a - b).abs() < 1e-12), "{t:?}");
        let t = nice_ticks(37.2, 101.5, 6);
        assert!(t[0] <= 37.2 && *t.last().unwrap() >= 101.5, "{t:?}");
        assert_eq!(t, vec![20.0, 40.0, 60.0, 80.0, 100.0, 120.0]);
        assert_eq!(nice_ticks(5.0, 5.0, 6), vec![5.0]);
    }

    #[test]
    fn log_ticks_mark_decades() {
        let t = log_ticks(-3, -1);
        let majors: Vec<f64> = t.iter().filter(|(_, m)| *m).map(|(v, _)| *v).collect();
        assert_eq!(majors, vec![-3.0, -2.0, -1.0]);
        assert_eq!(t.len(), 3 + 2 * 2);
        assert_eq!(fmt_pow10(-2.0), "0.01");
        assert_eq!(fmt_pow10(-5.0), "1e-5");
        assert_eq!(fmt_pow10(2.0), "100");
        assert_eq!(log_decades([0.004, 0.03].into_iter(), false), (-3, -1));
        assert_eq!(log_decades([0.004, 0.03].into_iter(), true), (-4, -1));
    }

    #[test]
    fn tick_labels_use_the_step_decimals() {
        assert_eq!(tick_labels(&[0.0, 0.5, 1.0]), vec!["0.0", "0.5", "1.0"]);
        assert_eq!(tick_labels(&[40.0, 60.0, 80.0]), vec!["40", "60", "80"]);
        assert_eq!(tick_labels(&[-0.0000001, 0.1]), vec!["0.0", "0.1"]);
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
    }

    #[test]
    fn svg_has_title_labels_and_points_inside_the_frame() {
        let svg = scatter_svg(
            &spec(true),
            &[pt("q4_0", 70.0, 0.05), pt("q8_0", 130.0, 0.002), pt("<odd>", 90.0, 0.0), pt("nan", 80.0, f64::NAN)],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        for want in
            ["Size vs KLD", "against base", "file size (MiB)", "mean KLD", ">q4_0<", ">q8_0<", "&lt;odd&gt; (0)"]
        {
            assert!(svg.contains(want), "missing {want}");
        }
        assert!(!svg.contains(">nan<"), "a NaN point was drawn");
        let c = circles(&svg);
        assert_eq!(c.len(), 3);
        for &(x, y) in &c {
            assert!((LEFT..=WIDTH - RIGHT).contains(&x) && (TOP..=HEIGHT - BOTTOM).contains(&y), "({x}, {y})");
        }
        // Larger KLD is higher up (smaller y); the zero point sits on the bottom edge.
        assert!(c[0].1 < c[1].1);
        assert!((c[2].1 - (HEIGHT - BOTTOM)).abs() < 1e-6);
        // Larger size is further right.
        assert!(c[1].0 > c[0].0);
    }

    #[test]
    fn svg_of_one_point_or_none_is_well_formed() {
        let one = scatter_svg(&spec(true), &[pt("only", 10.0, 0.0)]);
        assert_eq!(circles(&one).len(), 1);
        let lin = scatter_svg(&spec(false), &[pt("only", 10.0, 3.0)]);
        assert_eq!(circles(&lin).len(), 1);
        let none = scatter_svg(&spec(true), &[]);
        assert!(none.contains("no data") && none.ends_with("</svg>\n"));
    }
}
