//! The table (stdout), its CSV, the SVG chart, peak RSS and the `--quick`
//! ratio line.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::stats::Summary;
use super::{Case, GRACE, LARGE, REQUEST_TIMEOUT, SMALL, System};
use crate::bench::BoxError;

/// One case of one system, measured.
#[derive(Debug, Clone)]
pub struct Row {
    /// The system's name.
    pub system: &'static str,
    /// Body size and in-flight count.
    pub case: Case,
    /// The measured window.
    pub window: Duration,
    /// What was measured.
    pub summary: Summary,
    /// VmRSS when the case started (after the heap was trimmed), KiB.
    pub start_rss_kib: Option<u64>,
    /// VmHWM at the end of the case, KiB (`None` when unreadable).
    pub peak_rss_kib: Option<u64>,
    /// Why the case did not run, if it did not.
    pub setup_error: Option<String>,
}

impl Row {
    /// An empty row for `system` and `case`.
    pub fn new(system: &'static str, case: Case, window: Duration) -> Self {
        Self {
            system,
            case,
            window,
            summary: Summary::default(),
            start_rss_kib: None,
            peak_rss_kib: None,
            setup_error: None,
        }
    }

    /// Successful requests per second of the window.
    pub fn qps(&self) -> f64 {
        self.summary.ok as f64 / self.window.as_secs_f64()
    }

    /// Body bytes per second, both directions, in MB (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        self.qps() * (2 * self.case.body) as f64 / 1e6
    }
}

/// What runs, and how; `notes` are printed after the systems.
pub fn print_header(
    systems: &[&System],
    cases: &[Case],
    warmup: Duration,
    duration: Duration,
    notes: &[&str],
) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "pointsub bench: {} system(s) x {} case(s), loopback, {cpus} CPU(s), tokio multi-thread \
         runtime, release build: {}",
        systems.len(),
        cases.len(),
        if cfg!(debug_assertions) {
            "NO (debug build: numbers are meaningless)"
        } else {
            "yes"
        }
    );
    println!(
        "each case: fresh nodes, {:.1} s warm-up + {:.1} s measured, closed loop of <in flight> \
         tasks; request timeout {}s, cut at window end + {}s; incompressible bodies",
        warmup.as_secs_f64(),
        duration.as_secs_f64(),
        REQUEST_TIMEOUT.as_secs(),
        GRACE.as_secs()
    );
    println!(
        "QPS, MB/s (body bytes, both directions) and latencies count successes in the window; \
         failures count the whole case; peak RSS is the process's VmHWM during the case (reset, \
         heap trimmed, before each); libp2p_request_response warnings hidden (-v shows them)"
    );
    println!(
        "load average at start: {} (other processes on these CPUs skew the numbers)",
        load_average()
    );
    for s in systems {
        println!("  {}: {}", s.name, (s.describe)());
    }
    for note in notes {
        println!("  {note}");
    }
    println!();
}

fn fmt_body(bytes: usize) -> String {
    match bytes {
        LARGE => "1 MiB".to_string(),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b => format!("{b} B"),
    }
}

/// `850 µs`, `1.42 ms`, `2.31 s`; `-` for no measurement.
fn fmt_us(us: f64, any: bool) -> String {
    if !any {
        "-".to_string()
    } else if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// `123.4 MiB`, or `?`.
pub fn fmt_rss(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "?".to_string(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

const HEAD: [&str; 10] = [
    "system",
    "body",
    "in flight",
    "QPS",
    "MB/s",
    "mean",
    "p50",
    "p99",
    "failures",
    "peak RSS",
];

fn line(cells: &[String]) -> String {
    format!(
        "{:<18} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
        cells[0],
        cells[1],
        cells[2],
        cells[3],
        cells[4],
        cells[5],
        cells[6],
        cells[7],
        cells[8],
        cells[9]
    )
}

/// The table's column names.
pub fn print_table_head() {
    let head: Vec<String> = HEAD.iter().map(|s| s.to_string()).collect();
    println!("{}", line(&head));
}

/// One row, as soon as its case is done, with its failure kinds below it.
pub fn print_row(row: &Row) {
    let s = &row.summary;
    let any = s.ok > 0;
    let cells = [
        row.system.to_string(),
        fmt_body(row.case.body),
        row.case.in_flight.to_string(),
        format!("{:.0}", row.qps()),
        format!("{:.1}", row.mb_per_s()),
        fmt_us(s.mean_us, any),
        fmt_us(f64::from(s.p50_us), any),
        fmt_us(f64::from(s.p99_us), any),
        s.failed().to_string(),
        fmt_rss(row.peak_rss_kib),
    ];
    println!("{}", line(&cells));
    if let Some(e) = &row.setup_error {
        println!("    not run: {e}");
    }
    if s.failed() > 0 {
        println!("    failures: {}", s.failure_kinds(4));
    }
}

/// Each (system, case) of `rows` (several rounds of the same cases) once,
/// in the order first measured: the round with the median QPS (the lower
/// one of the two middle rounds when their number is even), with the
/// failures of all its rounds added up and the peak RSS of its first
/// round: later rounds run in a process that has run every other system
/// since, whose heap the trim before each case does not return to where
/// a single-round run would have it.
pub fn median_rows(rows: &[Row]) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    for row in rows {
        if out
            .iter()
            .any(|r| r.system == row.system && r.case == row.case)
        {
            continue;
        }
        let mut rounds: Vec<&Row> = rows
            .iter()
            .filter(|r| r.system == row.system && r.case == row.case)
            .collect();
        rounds.sort_by(|a, b| a.qps().total_cmp(&b.qps()));
        let mut median = rounds[(rounds.len() - 1) / 2].clone();
        median.summary.failures.clear();
        for r in &rounds {
            for (kind, n) in &r.summary.failures {
                *median.summary.failures.entry(kind.clone()).or_insert(0) += n;
            }
        }
        median.peak_rss_kib = row.peak_rss_kib;
        median.setup_error = rounds.iter().find_map(|r| r.setup_error.clone());
        out.push(median);
    }
    out
}

/// One line per row of `medians`: its system and case, then the QPS of
/// each of its rounds in `rows`, in the order they ran.
pub fn round_lines(rows: &[Row], medians: &[Row]) -> Vec<String> {
    medians
        .iter()
        .map(|m| {
            let qps: Vec<String> = rows
                .iter()
                .filter(|r| r.system == m.system && r.case == m.case)
                .map(|r| format!("{:.0}", r.qps()))
                .collect();
            format!(
                "  {} {} x {}: {} (median {:.0})",
                m.system,
                fmt_body(m.case.body),
                m.case.in_flight,
                qps.join(" / "),
                m.qps()
            )
        })
        .collect()
}

/// The rows as CSV, one line per case, with a header line.
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "system,body_bytes,in_flight,window_s,ok,qps,mb_per_s,mean_us,p50_us,p99_us,failures,\
         start_rss_kib,peak_rss_kib,failure_kinds\n",
    );
    for r in rows {
        let s = &r.summary;
        let kinds = match &r.setup_error {
            Some(e) => format!("not run: {e}"),
            None => s.failure_kinds(usize::MAX),
        };
        let _ = writeln!(
            out,
            "{},{},{},{:.3},{},{:.1},{:.2},{:.1},{},{},{},{},{},\"{}\"",
            r.system,
            r.case.body,
            r.case.in_flight,
            r.window.as_secs_f64(),
            s.ok,
            r.qps(),
            r.mb_per_s(),
            s.mean_us,
            s.p50_us,
            s.p99_us,
            s.failed(),
            r.start_rss_kib.map_or_else(String::new, |k| k.to_string()),
            r.peak_rss_kib.map_or_else(String::new, |k| k.to_string()),
            kinds.replace('"', "\"\""),
        );
    }
    out
}

fn create_parent(path: &Path) -> Result<(), BoxError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Writes [`csv`] to `path`, creating its directory.
pub fn write_csv(path: &Path, rows: &[Row]) -> Result<(), BoxError> {
    create_parent(path)?;
    std::fs::write(path, csv(rows)).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// Line colors, in system order (then plotters' palette).
const LINE_COLORS: [plotters::style::RGBAColor; 4] = [
    plotters::style::RGBAColor(214, 39, 40, 1.0),
    plotters::style::RGBAColor(31, 119, 180, 1.0),
    plotters::style::RGBAColor(90, 90, 90, 1.0),
    plotters::style::RGBAColor(44, 160, 44, 1.0),
];

/// Draws QPS against in-flight count (log x), one line per system, for the
/// 581 B cases.
pub fn write_svg(path: &Path, rows: &[Row]) -> Result<(), BoxError> {
    use plotters::prelude::*;

    create_parent(path)?;
    let mut systems: Vec<&str> = Vec::new();
    for r in rows {
        if !systems.contains(&r.system) {
            systems.push(r.system);
        }
    }
    let small: Vec<&Row> = rows.iter().filter(|r| r.case.body == SMALL).collect();
    let max_x = small
        .iter()
        .map(|r| r.case.in_flight)
        .max()
        .unwrap_or(1)
        .max(10) as f64;
    let max_y = small.iter().map(|r| r.qps()).fold(0.0, f64::max).max(1.0) * 1.1;

    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("QPS vs requests in flight, {SMALL} B bodies, loopback"),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d((0.8f64..max_x * 1.25).log_scale(), 0f64..max_y)?;
    chart
        .configure_mesh()
        .x_desc("requests in flight (log scale)")
        .y_desc("QPS")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (i, system) in systems.iter().enumerate() {
        let color = LINE_COLORS
            .get(i)
            .copied()
            .unwrap_or_else(|| Palette99::pick(i).to_rgba());
        let points: Vec<(f64, f64)> = small
            .iter()
            .filter(|r| r.system == *system)
            .map(|r| (r.case.in_flight as f64, r.qps()))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(*system)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The system whose QPS [`ratio_line`] compares with the anchors'.
pub const RATIO_SYSTEM: &str = "pointsub-tokio";

/// `<system>'s QPS / <other>'s` for `case`, as `1.23x`; `n/a` when either
/// did not run.
fn ratio(rows: &[Row], case: Case, system: &str, other: &str) -> String {
    let qps = |name: &str| {
        rows.iter()
            .find(|r| r.system == name && r.case == case)
            .map(Row::qps)
    };
    match (qps(system), qps(other)) {
        (Some(p), Some(o)) if o > 0.0 => format!("{:.2}x", p / o),
        (Some(_), Some(_)) => "infx".to_string(),
        _ => "n/a".to_string(),
    }
}

/// `ratio vs-request-response <R>x vs-raw-tcp <R>x`: pointsub's
/// ([`RATIO_SYSTEM`]) QPS over each anchor's, for `case`; `n/a` for a
/// system that did not run.
pub fn ratio_line(rows: &[Row], case: Case) -> String {
    format!(
        "ratio vs-request-response {} vs-raw-tcp {}",
        ratio(rows, case, RATIO_SYSTEM, "request-response"),
        ratio(rows, case, RATIO_SYSTEM, "raw-tcp")
    )
}

/// The same ratios for another pointsub adapter, and its QPS over
/// [`RATIO_SYSTEM`]'s: `<system>: vs-request-response <R>x vs-raw-tcp <R>x
/// vs-pointsub-tokio <R>x`. It does not start with `ratio`, so the line
/// [`ratio_line`] prints stays the only one that does.
pub fn adapter_ratio_line(rows: &[Row], case: Case, system: &str) -> String {
    format!(
        "{system}: vs-request-response {} vs-raw-tcp {} vs-{RATIO_SYSTEM} {}",
        ratio(rows, case, system, "request-response"),
        ratio(rows, case, system, "raw-tcp"),
        ratio(rows, case, system, RATIO_SYSTEM)
    )
}

/// The QPS of `system` at `case`, if it ran and answered anything.
fn qps_of(rows: &[Row], case: Case, system: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.system == system && r.case == case)
        .map(Row::qps)
        .filter(|q| *q > 0.0)
}

/// The bound on requests per second at `case`: `1 / (1/L + 1/R)`, with L
/// the cipher row's QPS and R raw TCP's, when both ran.
pub fn bound(rows: &[Row], case: Case) -> Option<f64> {
    let l = qps_of(rows, case, super::cipher::NAME)?;
    let r = qps_of(rows, case, "raw-tcp")?;
    Some(1.0 / (1.0 / l + 1.0 / r))
}

/// For `case`: the bound's line, then each system's QPS over it, e.g.
/// `bound 581 B x 100: 1/(1/L + 1/R) = 1/(1/93000 + 1/41000) = 28457 req/s`
/// and `  pointsub-tokio 0.91 of the bound`. Empty when the cipher or raw
/// TCP did not run.
pub fn bound_lines(rows: &[Row], case: Case) -> Vec<String> {
    let Some(b) = bound(rows, case) else {
        return Vec::new();
    };
    let l = qps_of(rows, case, super::cipher::NAME).unwrap_or(0.0);
    let r = qps_of(rows, case, "raw-tcp").unwrap_or(0.0);
    let mut out = vec![format!(
        "bound {} x {}: 1/(1/L + 1/R) = 1/(1/{l:.0} + 1/{r:.0}) = {b:.0} req/s          (L: cipher only, R: raw TCP)",
        fmt_body(case.body),
        case.in_flight
    )];
    for row in rows.iter().filter(|r| r.case == case) {
        if row.system != super::cipher::NAME {
            out.push(format!(
                "  {} {:.2} of the bound",
                row.system,
                row.qps() / b
            ));
        }
    }
    out
}

/// `ratio vs-request-response <R>x vs-bound <R>`: pointsub's
/// ([`RATIO_SYSTEM`]) QPS over request-response's and over the bound, for
/// `case`; `n/a` for what did not run.
pub fn bound_ratio_line(rows: &[Row], case: Case) -> String {
    let vs_bound = match (qps_of(rows, case, RATIO_SYSTEM), bound(rows, case)) {
        (Some(p), Some(b)) => format!("{:.2}", p / b),
        _ => "n/a".to_owned(),
    };
    format!(
        "ratio vs-request-response {} vs-bound {vs_bound}",
        ratio(rows, case, RATIO_SYSTEM, "request-response"),
    )
}

/// The 1, 5 and 15 minute load averages, from /proc/loadavg (`?` elsewhere).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_string())
}

/// The process's resident set size now (VmRSS), KiB.
pub fn rss_kib() -> Option<u64> {
    proc_status_kib("VmRSS:")
}

/// The process's peak resident set size (VmHWM), KiB.
pub fn peak_rss_kib() -> Option<u64> {
    proc_status_kib("VmHWM:")
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Hands the heap's free pages back to the kernel, then resets VmHWM to
/// the current RSS (Linux: `5` into clear_refs), so the next case's peak is
/// its own; false if the kernel refused the reset.
pub fn reset_peak_rss() -> bool {
    trim_heap();
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// glibc keeps freed memory in its arenas: without this, RSS left over from
/// one case would count in the next one's peak.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's malloc_trim only returns free heap pages to the
        // kernel; it has no preconditions and is thread-safe.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::Recorder;
    use crate::bench::{QUICK, case};

    fn row(system: &'static str, c: Case, ok: u64) -> Row {
        let mut r = Row::new(system, c, Duration::from_secs(2));
        let mut rec = Recorder::default();
        for _ in 0..ok {
            rec.success(Duration::from_micros(100));
        }
        r.summary = rec.summarize();
        r
    }

    #[test]
    fn median_rows_take_each_cases_median_round_and_keep_every_failure() {
        let large = crate::bench::LARGE_CASE;
        let mut rows = Vec::new();
        // Three rounds of two systems and two cases, interleaved as the
        // harness runs them.
        for (round, (a, b, c)) in [(300, 9_000, 250), (500, 7_000, 260), (400, 8_000, 240)]
            .into_iter()
            .enumerate()
        {
            let mut quick = row("pointsub-tokio", QUICK, b);
            quick.peak_rss_kib = Some(1_000 + round as u64 * 10);
            if round == 2 {
                quick
                    .summary
                    .failures
                    .insert(crate::bench::stats::failure_message("timed out"), 3);
            }
            rows.push(quick);
            rows.push(row("pointsub-tokio", large, a));
            rows.push(row("request-response", large, c));
        }
        let medians = median_rows(&rows);
        assert_eq!(medians.len(), 3, "one row per system and case");
        assert_eq!(
            (medians[0].system, medians[0].case),
            ("pointsub-tokio", QUICK),
            "in the order first measured"
        );
        assert_eq!(medians[0].summary.ok, 8_000);
        assert_eq!(
            medians[0].summary.failed(),
            3,
            "a failure in any round counts"
        );
        assert_eq!(
            medians[0].peak_rss_kib,
            Some(1_000),
            "the first round's peak"
        );
        assert_eq!(medians[1].summary.ok, 400);
        assert_eq!(medians[2].summary.ok, 250);
        let lines = round_lines(&rows, &medians);
        assert_eq!(
            lines[1],
            "  pointsub-tokio 1 MiB x 4: 150 / 250 / 200 (median 200)"
        );
        // An even number of rounds: the lower middle one.
        let two = median_rows(&rows[..6]);
        assert_eq!(two[1].summary.ok, 300);
    }

    #[test]
    fn ratio_line_has_the_exact_shape() {
        let rows = [
            row("pointsub-tokio", QUICK, 9_000),
            row("request-response", QUICK, 3_000),
            row("raw-tcp", QUICK, 12_000),
        ];
        assert_eq!(
            ratio_line(&rows, QUICK),
            "ratio vs-request-response 3.00x vs-raw-tcp 0.75x"
        );
        assert_eq!(
            ratio_line(&rows[..1], QUICK),
            "ratio vs-request-response n/a vs-raw-tcp n/a"
        );
    }

    #[test]
    fn adapter_ratio_line_compares_with_the_anchors_and_tokio() {
        let rows = [
            row("pointsub-tokio", QUICK, 9_000),
            row("pointsub-async-std", QUICK, 6_000),
            row("request-response", QUICK, 3_000),
            row("raw-tcp", QUICK, 12_000),
        ];
        assert_eq!(
            adapter_ratio_line(&rows, QUICK, "pointsub-async-std"),
            "pointsub-async-std: vs-request-response 2.00x vs-raw-tcp 0.50x \
             vs-pointsub-tokio 0.67x"
        );
        assert_eq!(
            ratio_line(&rows, QUICK),
            "ratio vs-request-response 3.00x vs-raw-tcp 0.75x"
        );
    }

    #[test]
    fn bound_combines_cipher_and_raw_tcp() {
        let c = crate::bench::LARGE_CASE;
        // 2 s windows: QPS = ok / 2. L = 300, R = 600: bound 200.
        let rows = [
            row("pointsub-tokio", c, 300),
            row("request-response", c, 100),
            row("raw-tcp", c, 1_200),
            row("cipher", c, 600),
        ];
        assert!((bound(&rows, c).unwrap() - 200.0).abs() < 1e-9);
        assert_eq!(
            bound_ratio_line(&rows, c),
            "ratio vs-request-response 3.00x vs-bound 0.75"
        );
        let lines = bound_lines(&rows, c);
        assert!(lines[0].contains("= 200 req/s"), "{}", lines[0]);
        assert!(lines.contains(&"  raw-tcp 3.00 of the bound".to_owned()));
        assert!(!lines.iter().any(|l| l.starts_with("  cipher")));
        assert!(bound_lines(&rows[..3], c).is_empty());
        assert_eq!(
            bound_ratio_line(&rows[..3], c),
            "ratio vs-request-response 3.00x vs-bound n/a"
        );
    }

    #[test]
    fn rates_count_both_directions() {
        let r = row("raw-tcp", case(LARGE, 4), 2_000);
        assert_eq!(r.qps(), 1_000.0);
        assert!((r.mb_per_s() - 2_097.152).abs() < 1e-6);
        let text = csv(&[r]);
        assert!(text.starts_with("system,body_bytes,in_flight,"));
        assert!(
            text.contains("\nraw-tcp,1048576,4,2.000,2000,1000.0,2097.15,100.0,100,100,0,,,\"\"\n")
        );
    }

    #[test]
    fn svg_is_drawn() {
        let dir = std::env::temp_dir().join(format!("pointsub-bench-{}", std::process::id()));
        let path = dir.join("chart.svg");
        let rows = [
            row("pointsub-tokio", case(SMALL, 1), 100),
            row("pointsub-tokio", case(SMALL, 100), 1_000),
            row("raw-tcp", case(SMALL, 1), 200),
            row("raw-tcp", case(SMALL, 100), 2_000),
            row("raw-tcp", case(LARGE, 4), 10),
        ];
        write_svg(&path, &rows).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("raw-tcp") && svg.contains("pointsub-tokio"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn peak_rss_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_kib().unwrap() > 0);
        }
    }
}
