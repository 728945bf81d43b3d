//! `pointsub soak --metrics-chart PATH`: scrapes the run's own `/metrics`
//! endpoint over HTTP once a second, then draws what a Grafana dashboard
//! on those metrics shows (request rate by outcome, latency quantiles from
//! the histogram buckets, requests in flight against the admission limit)
//! as an SVG with plotters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::BoxError;

/// One sample line of the exposition: name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses OpenMetrics / Prometheus text: comment lines are skipped, label
/// values unescaped. Lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            body = body.trim_start_matches(',');
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = body.find('=')?;
            let key = body[..eq].to_owned();
            body = body[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = body.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => {
                        let (_, e) = chars.next()?;
                        value.push(if e == 'n' { '\n' } else { e });
                    }
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.insert(key, value);
            body = &body[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `GET /metrics` over HTTP/1.1 from `addr`; the body.
pub async fn scrape(addr: SocketAddr) -> Result<String, BoxError> {
    let mut tcp = TcpStream::connect(addr).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await?;
    let raw = String::from_utf8(raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or("metrics endpoint: no end of headers")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("metrics endpoint answered {:?}", head.lines().next()).into());
    }
    Ok(body.to_owned())
}

/// What one scrape says, summed over protocols.
#[derive(Clone, Debug, Default)]
struct Point {
    t: f64,
    ok: f64,
    errors: f64,
    /// Cumulative client latency buckets, by upper bound (seconds).
    buckets: Vec<(f64, f64)>,
    in_flight: f64,
    server_in_flight: f64,
    admission_limit: f64,
}

fn point(t: f64, samples: &[Sample]) -> Point {
    let mut p = Point {
        t,
        ..Point::default()
    };
    let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
    for s in samples {
        match s.name.as_str() {
            "pointsub_client_requests_total" => {
                if s.labels.get("outcome").map(String::as_str) == Some("ok") {
                    p.ok += s.value;
                } else {
                    p.errors += s.value;
                }
            }
            "pointsub_client_request_duration_seconds_bucket" => {
                if let Some(le) = s.labels.get("le") {
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap_or(f64::INFINITY)
                    };
                    *buckets.entry(le.to_bits()).or_default() += s.value;
                }
            }
            "pointsub_client_requests_in_flight" => p.in_flight += s.value,
            "pointsub_server_requests_in_flight" => p.server_in_flight += s.value,
            "pointsub_server_admission_limit" => p.admission_limit += s.value,
            _ => {}
        }
    }
    p.buckets = buckets
        .into_iter()
        .map(|(b, n)| (f64::from_bits(b), n))
        .collect();
    p.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    p
}

/// The `q` quantile of the samples between two cumulative bucket sets,
/// interpolated linearly within its bucket (as PromQL's
/// `histogram_quantile` does); `None` without samples.
fn quantile(q: f64, before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let old = before
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, n)| *n);
            (le, (n - old).max(0.0))
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for &(le, n) in &delta {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let width = n - below;
            let frac = if width > 0.0 {
                (rank - below) / width
            } else {
                1.0
            };
            return Some(lower + (le - lower) * frac);
        }
        lower = le;
        below = n;
    }
    None
}

/// Scrapes `addr` every second until `stop` resolves; the points.
pub async fn sample(
    addr: SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<(f64, Vec<Sample>)> {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        match scrape(addr).await {
            Ok(text) => out.push((started.elapsed().as_secs_f64(), parse(&text))),
            Err(e) => tracing::warn!(error = %e, "soak chart: scrape failed"),
        }
        if *stop.borrow() {
            break;
        }
    }
    out
}

/// One panel: title, unit, and its series (name, points, color).
type Panel<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a Vec<(f64, f64)>, plotters::style::RGBColor)>,
);

/// Draws the chart of `scrapes` into `path` (SVG).
pub fn draw(path: &Path, scrapes: &[(f64, Vec<Sample>)]) -> Result<(), BoxError> {
    use plotters::prelude::*;

    let points: Vec<Point> = scrapes.iter().map(|(t, s)| point(*t, s)).collect();
    let mut rate_ok = Vec::new();
    let mut rate_err = Vec::new();
    let mut p50 = Vec::new();
    let mut p90 = Vec::new();
    let mut p99 = Vec::new();
    for w in points.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let dt = (b.t - a.t).max(1e-3);
        rate_ok.push((b.t, (b.ok - a.ok).max(0.0) / dt));
        rate_err.push((b.t, (b.errors - a.errors).max(0.0) / dt));
        for (q, series) in [(0.5, &mut p50), (0.9, &mut p90), (0.99, &mut p99)] {
            if let Some(v) = quantile(q, &a.buckets, &b.buckets) {
                series.push((b.t, v * 1e3));
            }
        }
    }
    let in_flight: Vec<(f64, f64)> = points.iter().map(|p| (p.t, p.in_flight)).collect();
    let server_in_flight: Vec<(f64, f64)> =
        points.iter().map(|p| (p.t, p.server_in_flight)).collect();
    let limit: Vec<(f64, f64)> = points.iter().map(|p| (p.t, p.admission_limit)).collect();
    let t_max = points.last().map_or(1.0, |p| p.t).max(1.0);
    let top = |series: &[&Vec<(f64, f64)>]| {
        series
            .iter()
            .flat_map(|s| s.iter().map(|p| p.1))
            .fold(0.0, f64::max)
            .max(1.0)
            * 1.15
    };

    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "pointsub soak, scraped from /metrics once a second",
        ("sans-serif", 22),
    )?;
    let panels = root.split_evenly((3, 1));
    let red = RGBColor(214, 39, 40);
    let blue = RGBColor(31, 119, 180);
    let grey = RGBColor(90, 90, 90);
    let green = RGBColor(44, 160, 44);
    let specs: [Panel; 3] = [
        (
            "request rate (client, all protocols)",
            "requests/s",
            vec![("ok", &rate_ok, blue), ("errors", &rate_err, red)],
        ),
        (
            "client latency quantiles (from the histogram buckets)",
            "ms",
            vec![
                ("p50", &p50, green),
                ("p90", &p90, blue),
                ("p99", &p99, red),
            ],
        ),
        (
            "in flight and admission limit (servers summed)",
            "requests",
            vec![
                ("client in flight", &in_flight, blue),
                ("server in flight", &server_in_flight, green),
                ("admission limit", &limit, grey),
            ],
        ),
    ];
    for (area, (title, unit, series)) in panels.iter().zip(specs) {
        let y_max = top(&series.iter().map(|s| s.1).collect::<Vec<_>>());
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(unit)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (name, points, color) in series {
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_with_escapes_and_inf() {
        let text = "# TYPE x counter\nx_total{a=\"/p/1\",b=\"q\\\"u\"} 3\ny 1.5\nh_bucket{le=\"+Inf\"} 7\n# EOF\n";
        let s = parse(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].labels["a"], "/p/1");
        assert_eq!(s[0].labels["b"], "q\"u");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].name, "y");
        assert_eq!(s[2].labels["le"], "+Inf");
        assert_eq!(s[2].value, 7.0);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let before = [(0.1, 0.0), (1.0, 0.0), (f64::INFINITY, 0.0)];
        let after = [(0.1, 50.0), (1.0, 100.0), (f64::INFINITY, 100.0)];
        let p50 = quantile(0.5, &before, &after).expect("samples");
        assert!((p50 - 0.1).abs() < 1e-9, "{p50}");
        let p75 = quantile(0.75, &before, &after).expect("samples");
        assert!((p75 - 0.55).abs() < 1e-9, "{p75}");
        assert_eq!(quantile(0.5, &after, &after), None);
    }
}
