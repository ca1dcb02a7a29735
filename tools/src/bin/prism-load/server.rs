//! The server under test: starting `prism` (or finding one already running), pinning
//! it, and measuring it from the outside — CPU time per process and per thread from
//! `/proc`, resident memory, and the forwarding counters of its `/metrics`.
#![allow(clippy::disallowed_methods)] // a tool owns its clock

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use prism_tools::{Http, SpawnedServer, cpu_seconds, rss_bytes};

/// A server the tool talks to.
pub struct Target {
    /// Where it listens (HTTP and signaling).
    pub addr: SocketAddr,
    /// Its process, when known (for `/proc`).
    pub pid: Option<u32>,
    /// Owned when the tool started it; stopped on drop.
    _spawned: Option<SpawnedServer>,
    /// Whether it serves Prism's `/metrics`.
    metrics: bool,
}

impl Target {
    /// Starts `binary` with one front thread, `workers` media workers and limits raised
    /// for a load run, and pins it as asked.
    pub fn spawn(binary: &Path, workers: usize, pin: &Pinning) -> Result<Self, String> {
        let many = "1000000".to_string();
        let env = [
            ("PRISM_MEDIA__WORKERS", workers.to_string()),
            ("PRISM_FRONT_THREADS", "1".to_string()),
            ("PRISM_LIMITS__MAX_CONNECTIONS", many.clone()),
            ("PRISM_LIMITS__MAX_CONNECTIONS_PER_IP", many.clone()),
            (
                "PRISM_LIMITS__TICKET_RATE_PER_USER_PER_MIN",
                "100000".into(),
            ),
            ("PRISM_LIMITS__TICKET_RATE_PER_IP_PER_MIN", "100000".into()),
            ("PRISM_LIMITS__PARTICIPANTS_PER_CHANNEL", "10000".into()),
            ("PRISM_LIMITS__MESSAGES_PER_S", "10000".into()),
            ("PRISM_LIMITS__MESSAGE_BURST", "100000".into()),
        ];
        let spawned = SpawnedServer::start(binary, &env)
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let pid = spawned.pid();
        if let Some(cpu) = &pin.server {
            taskset_all(pid, cpu)?;
        }
        if let Some(cpu) = &pin.worker {
            for (tid, name) in threads(pid) {
                if name.starts_with("prism-media") {
                    taskset(tid, cpu)?;
                }
            }
        }
        Ok(Self {
            addr: spawned.addr,
            pid: Some(pid),
            _spawned: Some(spawned),
            metrics: true,
        })
    }

    /// A server someone else started (its pid, if given, for the `/proc` figures).
    pub fn existing(addr: SocketAddr, pid: Option<u32>) -> Self {
        Self {
            addr,
            pid,
            _spawned: None,
            metrics: true,
        }
    }

    /// Whether forwarding counters come from the server's `/metrics`.
    pub fn has_metrics(&self) -> bool {
        self.metrics
    }

    /// A server without Prism's `/metrics` (Janus): forwarding is counted by the clients.
    pub fn without_metrics(mut self) -> Self {
        self.metrics = false;
        self
    }

    /// A snapshot of the server's counters and CPU.
    pub fn sample(&self) -> Sample {
        let metrics = if self.metrics {
            Http::new(self.addr)
                .get_text("/metrics")
                .map(|t| Metrics::parse(&t))
                .unwrap_or_default()
        } else {
            Metrics::default()
        };
        let (cpu, rss, threads) = match self.pid {
            Some(pid) => (
                cpu_seconds(pid),
                rss_bytes(pid),
                threads(pid)
                    .into_iter()
                    .filter_map(|(tid, name)| thread_cpu_seconds(pid, tid).map(|c| (name, c)))
                    .collect(),
            ),
            None => (None, None, Vec::new()),
        };
        Sample {
            at: Instant::now(),
            cpu,
            rss,
            threads,
            metrics,
        }
    }
}

/// Where to pin what (CPU lists as `taskset -c` takes them).
#[derive(Debug, Clone, Default)]
pub struct Pinning {
    /// The whole server process.
    pub server: Option<String>,
    /// The server's media worker threads only.
    pub worker: Option<String>,
    /// The load generator itself.
    pub load: Option<String>,
}

/// Pins this process (and the threads it starts later) to `cpu`.
pub fn pin_self(cpu: &str) -> Result<(), String> {
    taskset(std::process::id(), cpu)
}

fn taskset(tid: u32, cpu: &str) -> Result<(), String> {
    run_taskset(&["-p", "-c", cpu, &tid.to_string()])
}

pub fn taskset_all(pid: u32, cpu: &str) -> Result<(), String> {
    run_taskset(&["-a", "-p", "-c", cpu, &pid.to_string()])
}

fn run_taskset(args: &[&str]) -> Result<(), String> {
    let out = Command::new("taskset")
        .args(args)
        .output()
        .map_err(|e| format!("taskset (util-linux) is needed for pinning: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "taskset {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The threads of a process: (tid, name).
pub fn threads(pid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
        Some((tid, name.trim().to_string()))
    })
    .collect()
}

/// CPU time (user + system) of one thread, seconds.
pub fn thread_cpu_seconds(pid: u32, tid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Kernel clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
fn clock_ticks() -> f64 {
    100.0
}

/// The forwarding counters of `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metrics {
    pub forwarded_packets: f64,
    pub forwarded_bytes: f64,
    pub dropped_packets: f64,
    pub worker_busy_seconds: f64,
    pub nacks: f64,
    pub plis: f64,
}

impl Metrics {
    /// Reads the counters this tool needs from Prometheus text.
    pub fn parse(text: &str) -> Self {
        let mut m = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            let base = name.split('{').next().unwrap_or(name);
            match base {
                "rtc_forwarded_packets_total" => m.forwarded_packets += v,
                "rtc_forwarded_bytes_total" => m.forwarded_bytes += v,
                "rtc_dropped_packets_total" => m.dropped_packets += v,
                "rtc_worker_busy_seconds_total" => m.worker_busy_seconds += v,
                "rtc_nack_total" => m.nacks += v,
                "rtc_pli_total" => m.plis += v,
                _ => {}
            }
        }
        m
    }
}

/// The server at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    /// Process CPU seconds.
    pub cpu: Option<f64>,
    /// Resident bytes.
    pub rss: Option<u64>,
    /// CPU seconds per thread name (threads of one name summed by the reader).
    pub threads: Vec<(String, f64)>,
    pub metrics: Metrics,
}

/// What the server did between two samples.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub seconds: f64,
    /// Cores the process kept busy (CPU seconds per second).
    pub busy_cores: Option<f64>,
    /// Busy cores per thread group (name without its index), largest first.
    pub threads: Vec<(String, f64)>,
    pub forwarded_pps: f64,
    pub forwarded_bps: f64,
    pub dropped: f64,
    pub nacks: f64,
}

impl Window {
    /// The window between `a` and `b`.
    pub fn between(a: &Sample, b: &Sample) -> Self {
        let seconds = b.at.duration_since(a.at).as_secs_f64().max(1e-6);
        let busy_cores = match (a.cpu, b.cpu) {
            (Some(x), Some(y)) => Some((y - x) / seconds),
            _ => None,
        };
        let mut groups: Vec<(String, f64)> = Vec::new();
        for (name, cpu) in &b.threads {
            let before = a
                .threads
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0.0, |(_, c)| *c);
            let group = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
            let share = (cpu - before).max(0.0) / seconds;
            match groups.iter_mut().find(|(g, _)| g == group) {
                Some(g) => g.1 += share,
                None => groups.push((group.to_string(), share)),
            }
        }
        groups.sort_by(|x, y| y.1.total_cmp(&x.1));
        Self {
            seconds,
            busy_cores,
            threads: groups,
            forwarded_pps: (b.metrics.forwarded_packets - a.metrics.forwarded_packets) / seconds,
            forwarded_bps: (b.metrics.forwarded_bytes - a.metrics.forwarded_bytes) * 8.0 / seconds,
            dropped: b.metrics.dropped_packets - a.metrics.dropped_packets,
            nacks: b.metrics.nacks - a.metrics.nacks,
        }
    }

    /// Forwarded packets per second per busy core.
    pub fn pps_per_core(&self) -> Option<f64> {
        self.busy_cores
            .filter(|b| *b > 0.0)
            .map(|b| self.forwarded_pps / b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_from_prometheus_text() {
        let text = "# HELP x\nrtc_forwarded_packets_total 120\nrtc_forwarded_bytes_total 9e3\n\
                    rtc_dropped_packets_total{reason=\"a\"} 2\nrtc_dropped_packets_total{reason=\"b\"} 3\n\
                    rtc_worker_busy_seconds_total{worker=\"0\"} 1.5\n";
        let m = Metrics::parse(text);
        assert_eq!(m.forwarded_packets, 120.0);
        assert_eq!(m.forwarded_bytes, 9000.0);
        assert_eq!(m.dropped_packets, 5.0);
        assert_eq!(m.worker_busy_seconds, 1.5);
    }

    #[test]
    fn this_process_has_threads_and_cpu() {
        let pid = std::process::id();
        let t = threads(pid);
        assert!(!t.is_empty());
        assert!(
            t.iter()
                .all(|(tid, _)| thread_cpu_seconds(pid, *tid).is_some())
        );
    }
}
