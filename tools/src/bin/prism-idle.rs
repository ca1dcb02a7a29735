//! `prism-idle`: how much memory do N idle signaling sessions cost?
//!
//! Opens N WebSocket sessions against Prism, each fully joined (ticket minted over
//! HTTP, `rtc.join`, `rtc.joined` received), spread over rooms of `--per-room`,
//! holds them idle while answering the server's keep-alive pings, and reports the
//! server's resident memory before and after, per session. By default it starts
//! its own `prism` (the binary next to this one) with limits raised for the run.
//!
//! Example: `cargo build --release -p prism -p prism-tools &&
//!           target/release/prism-idle --sessions 10000`
#![forbid(unsafe_code)]
#![allow(clippy::disallowed_methods)] // a tool owns its clock

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use prism_tools::{Http, SpawnedServer, rss_bytes, sibling_binary};
use tungstenite::{Message, WebSocket};

struct Args {
    sessions: usize,
    per_room: usize,
    hold_s: u64,
    server: Option<SocketAddr>,
    pid: Option<u32>,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        sessions: 10_000,
        per_room: 50,
        hold_s: 15,
        server: None,
        pid: None,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--sessions" => a.sessions = val()?.parse().map_err(|e| format!("--sessions: {e}"))?,
            "--per-room" => a.per_room = val()?.parse().map_err(|e| format!("--per-room: {e}"))?,
            "--hold-s" => a.hold_s = val()?.parse().map_err(|e| format!("--hold-s: {e}"))?,
            "--server" => a.server = Some(val()?.parse().map_err(|e| format!("--server: {e}"))?),
            "--pid" => a.pid = Some(val()?.parse().map_err(|e| format!("--pid: {e}"))?),
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!(
                    "prism-idle [--sessions N=10000] [--per-room N=50] [--hold-s S=15] [--json]\n           [--server HOST:PORT --pid PID]   (default: start ./prism with raised limits)\n\nOpens N joined, idle signaling sessions and reports the server's resident\nmemory per session. Against your own server, raise its ticket rate and\nper-IP connection limits first, and pass its pid for the memory figures."
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (see --help)")),
        }
    }
    if a.sessions == 0 || a.per_room == 0 {
        return Err("--sessions and --per-room must be positive".into());
    }
    Ok(a)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("prism-idle: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let spawned;
    let (addr, pid) = match args.server {
        Some(addr) => (addr, args.pid),
        None => {
            let n = (args.sessions * 2 + 1000).to_string();
            spawned = SpawnedServer::start(
                &sibling_binary("prism"),
                &[
                    ("PRISM_LIMITS__MAX_CONNECTIONS", n.clone()),
                    ("PRISM_LIMITS__MAX_CONNECTIONS_PER_IP", n.clone()),
                    ("PRISM_LIMITS__TICKET_RATE_PER_USER_PER_MIN", n.clone()),
                    ("PRISM_LIMITS__TICKET_RATE_PER_IP_PER_MIN", n),
                    (
                        "PRISM_LIMITS__PARTICIPANTS_PER_CHANNEL",
                        args.per_room.to_string(),
                    ),
                ],
            )
            .map_err(|e| format!("starting prism: {e}"))?;
            (spawned.addr, Some(spawned.pid()))
        }
    };
    let mut http = Http::new(addr);
    let (status, body) = http
        .request(
            "POST",
            "/v1/dev/session-token",
            None,
            Some(&serde_json::json!({"user_uid": "idle", "channels": {"*": []}})),
        )
        .map_err(|e| format!("dev session token: {e}"))?;
    let token = body["token"]
        .as_str()
        .filter(|_| status == 200)
        .ok_or(format!("dev session token refused ({status}): {body}"))?
        .to_string();
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = pid.and_then(rss_bytes);
    let started = Instant::now();
    let mut sockets: Vec<WebSocket<TcpStream>> = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        let channel = format!("idle_{}", i / args.per_room);
        let (status, body) = http
            .request(
                "POST",
                &format!("/v1/rtc/channels/{channel}/join-ticket"),
                Some(&token),
                Some(&serde_json::json!({"device_id": format!("d{i}")})),
            )
            .map_err(|e| format!("join ticket {i}: {e}"))?;
        let ticket = body["ticket"]
            .as_str()
            .filter(|_| status == 201)
            .ok_or(format!("join ticket {i} refused ({status}): {body}"))?;
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect {i}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let url = format!("ws://{addr}/v1/rtc/signaling");
        let (mut ws, _) =
            tungstenite::client(url.as_str(), stream).map_err(|e| format!("upgrade {i}: {e}"))?;
        let join = serde_json::json!({"type": "rtc.join", "request_id": "j", "channel_id": channel,
                                      "payload": {"ticket": ticket}});
        ws.send(Message::text(join.to_string()))
            .map_err(|e| format!("join {i}: {e}"))?;
        loop {
            if let Message::Text(t) = ws.read().map_err(|e| format!("joined {i}: {e}"))? {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                match v["type"].as_str() {
                    Some("rtc.joined") => break,
                    Some("rtc.error") => return Err(format!("join {i} refused: {t}")),
                    _ => {}
                }
            }
        }
        ws.get_mut()
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        sockets.push(ws);
        if i % 1000 == 999 {
            pump(&mut sockets);
            eprint!("\r{} sessions joined", i + 1);
        }
    }
    let join_s = started.elapsed().as_secs_f64();
    eprintln!(
        "\r{} sessions joined in {join_s:.1} s; holding {} s",
        sockets.len(),
        args.hold_s
    );
    let hold_until = Instant::now() + Duration::from_secs(args.hold_s);
    let mut peak = 0;
    while Instant::now() < hold_until {
        let open = pump(&mut sockets);
        if open < sockets.len() {
            return Err(format!(
                "{} sessions were closed by the server",
                sockets.len() - open
            ));
        }
        peak = peak.max(pid.and_then(rss_bytes).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(500));
    }
    let rss_after = pid.and_then(rss_bytes);
    let per = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / sockets.len() as f64),
        _ => None,
    };
    let mib = |b: Option<u64>| {
        b.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))
            .unwrap_or("n/a".into())
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({"sessions": sockets.len(), "per_room": args.per_room,
                               "join_seconds": join_s, "rss_before": rss_before, "rss_after": rss_after,
                               "rss_peak": peak, "bytes_per_session": per})
        );
    } else {
        println!("sessions           {}", sockets.len());
        println!(
            "rooms              {}",
            sockets.len().div_ceil(args.per_room)
        );
        println!(
            "join time          {join_s:.1} s ({:.0} joins/s)",
            sockets.len() as f64 / join_s
        );
        println!("server RSS before  {}", mib(rss_before));
        println!("server RSS after   {}", mib(rss_after));
        println!("server RSS peak    {}", mib(Some(peak)));
        println!(
            "per session        {}",
            per.map(|p| format!("{:.1} KiB", p / 1024.0))
                .unwrap_or("n/a".into())
        );
    }
    Ok(())
}

/// Reads whatever each socket has (answering pings); returns how many are open.
fn pump(sockets: &mut [WebSocket<TcpStream>]) -> usize {
    let mut open = 0;
    for ws in sockets.iter_mut() {
        let mut alive = true;
        loop {
            match ws.read() {
                Ok(Message::Close(_)) => {
                    alive = false;
                    break;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break;
                }
                Err(_) => {
                    alive = false;
                    break;
                }
            }
        }
        let _ = ws.flush();
        if alive {
            open += 1;
        }
    }
    open
}
