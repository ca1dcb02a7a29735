//! `prism-load compare`: the same load against Prism and then Janus, one table.
//!
//! Both targets run under the same pinning (server on the server CPUs, this generator
//! on the others), with the same clients, media and scenario. Forwarded packets are
//! counted the same way for both: what the subscribers received (UDP level), so the
//! per-core figure does not depend on a server's own counters.

use std::sync::atomic::AtomicBool;

use serde_json::{Value, json};

use crate::{Args, Report, Row, TargetKind, per_subscriber, percentile, plot, run_target};

/// The figures compared, per target.
struct Figures {
    pps: f64,
    busy: Option<f64>,
    per_core: Option<f64>,
    cpu_us_per_packet: Option<f64>,
    mem_per_sub_kib: Option<f64>,
    loss_percent: f64,
    p50: Option<f64>,
    p95: Option<f64>,
    join50: Option<f64>,
    join95: Option<f64>,
}

fn figures(r: &Report, row: &Row) -> Figures {
    let pps = row.clients.rx_packets as f64 / row.server.seconds;
    let busy = row.server.busy_cores;
    let per_core = busy.filter(|b| *b > 0.0).map(|b| pps / b);
    Figures {
        pps,
        busy,
        per_core,
        cpu_us_per_packet: per_core.map(|p| 1e6 / p),
        mem_per_sub_kib: per_subscriber(r, row).map(|b| b / 1024.0),
        loss_percent: row.clients.loss() * 100.0,
        p50: row.clients.latency_ms(0.5),
        p95: row.clients.latency_ms(0.95),
        join50: percentile(&r.join_ms, 0.5),
        join95: percentile(&r.join_ms, 0.95),
    }
}

fn run_one(a: &Args, target: TargetKind, stop: &AtomicBool) -> Result<Report, String> {
    let mut args = a.clone();
    args.target = target;
    args.compare = false;
    args.bare = false;
    args.ramp = None;
    if !a.quiet {
        eprintln!("== {} ==", target.name());
    }
    let mut report = Report::new(a.scenario);
    run_target(&args, stop, &mut report)?;
    if report.rows.is_empty() {
        return Err(format!("{}: nothing was measured", target.name()));
    }
    Ok(report)
}

pub fn run(a: &Args, stop: &AtomicBool) -> Result<(), String> {
    crate::janus::find()?;
    let prism = run_one(a, TargetKind::Prism, stop)?;
    let janus = run_one(a, TargetKind::Janus, stop)?;
    let (pr, jr) = (
        prism.rows.last().expect("checked in run_one"),
        janus.rows.last().expect("checked in run_one"),
    );
    let (p, j) = (figures(&prism, pr), figures(&janus, jr));
    type Get = fn(&Figures) -> Option<f64>;
    let rows: [(&str, &str, Get, usize); 10] = [
        ("forwarded pkt/s", "", |f| Some(f.pps), 0),
        ("server busy cores", "", |f| f.busy, 3),
        (
            "forwarded pkt/s per busy core",
            "higher is better",
            |f| f.per_core,
            0,
        ),
        (
            "CPU µs per forwarded packet",
            "lower is better",
            |f| f.cpu_us_per_packet,
            2,
        ),
        (
            "memory per subscriber, KiB",
            "lower is better",
            |f| f.mem_per_sub_kib,
            0,
        ),
        ("loss, %", "", |f| Some(f.loss_percent), 3),
        ("latency p50, ms", "", |f| f.p50, 2),
        ("latency p95, ms", "", |f| f.p95, 2),
        ("join p50, ms", "", |f| f.join50, 0),
        ("join p95, ms", "", |f| f.join95, 0),
    ];
    println!();
    println!(
        "prism-load compare: {} with {} subscribers ({} subscribe pcs), {} s window, same pinning",
        a.scenario.name(),
        pr.subscribers,
        pr.subscribe_pcs,
        a.seconds
    );
    println!(
        "  {:<32} {:>12} {:>12} {:>12}",
        "", "Prism", "Janus", "Prism/Janus"
    );
    let mut json_rows = Vec::new();
    for (name, note, get, digits) in rows {
        let (x, y) = (get(&p), get(&j));
        let ratio = match (x, y) {
            (Some(x), Some(y)) if y > 0.0 => Some(x / y),
            _ => None,
        };
        let cell = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.digits$}"));
        println!(
            "  {:<32} {:>12} {:>12} {:>12}  {note}",
            name,
            cell(x),
            cell(y),
            ratio.map_or("n/a".into(), |r| format!("{r:.2}"))
        );
        json_rows.push(json!({"row": name, "prism": x, "janus": y, "ratio": ratio}));
    }
    let threads = |row: &Row| -> Value {
        row.server
            .threads
            .iter()
            .filter(|(_, c)| *c >= 0.005)
            .map(|(n, c)| json!({"thread": n, "busy_cores": c}))
            .collect()
    };
    let doc = json!({
        "compare": a.scenario.name(),
        "subscribers": pr.subscribers,
        "subscribe_pcs": pr.subscribe_pcs,
        "seconds": a.seconds,
        "machine": crate::machine(),
        "rows": json_rows,
        "prism_threads": threads(pr),
        "janus_threads": threads(jr),
    });
    if let Some(path) = &a.json {
        std::fs::write(path, doc.to_string() + "\n")
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &a.png {
        let bars: Vec<(String, Vec<f64>)> = [
            ("pkt/s per busy core", p.per_core, j.per_core),
            (
                "CPU µs per packet",
                p.cpu_us_per_packet,
                j.cpu_us_per_packet,
            ),
            ("KiB per subscriber", p.mem_per_sub_kib, j.mem_per_sub_kib),
            ("latency p95, ms", p.p95, j.p95),
            ("join p95, ms", p.join95, j.join95),
        ]
        .into_iter()
        .map(|(n, x, y)| (n.to_string(), vec![x.unwrap_or(0.0), y.unwrap_or(0.0)]))
        .collect();
        let title = format!("Prism vs Janus: {}", a.scenario.name());
        plot::bar_chart(path, &title, &["Prism", "Janus"], &bars)?;
    }
    if a.check {
        for (name, r, row) in [("prism", &prism, pr), ("janus", &janus, jr)] {
            if row.clients.rx_packets == 0 || row.clients.first_frames < row.subscribe_pcs as u64 {
                return Err(format!("check: {name} did not deliver to every subscriber"));
            }
            let _ = r;
        }
        println!("check: both targets delivered packets");
    }
    Ok(())
}
