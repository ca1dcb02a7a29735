//! Janus VideoRoom as a second target: its WebSocket API (sessions, handles, the
//! `janus.plugin.videoroom` requests) and a Janus process started from a minimal
//! configuration written to a temporary directory.
//!
//! The configuration is what makes per-core figures comparable: one static event loop
//! (`event_loops = 1`, so all media of all handles runs on one thread, as Prism's one
//! media worker), the VideoRoom plugin and the WebSocket transport only (on loopback),
//! no admin API, no event handlers. Janus is installed by the machine's package
//! manager (`apt-get install janus`); this module only checks it is there.
#![allow(clippy::disallowed_methods)] // a tool owns its clock

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// How long a Janus response may take.
const RESPONSE_WAIT: Duration = Duration::from_secs(20);
/// Janus drops a session after 60 s without a request: keep-alive well before.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// Where Debian puts Janus's plugins and transports.
const LIB_DIRS: [&str; 2] = ["/usr/lib/x86_64-linux-gnu/janus", "/usr/lib/janus"];

/// A Janus process with its own configuration; killed (and its directory removed) on drop.
pub struct JanusProcess {
    child: Child,
    dir: PathBuf,
    /// The WebSocket API.
    pub addr: SocketAddr,
    /// The address Janus gathers its ICE candidates on (clients bind to it too).
    pub media_ip: IpAddr,
}

/// The machine's own non-loopback IPv4 address (the source of its default route), which
/// Janus needs: libnice gathers no candidate on the loopback interface. Packets between
/// two sockets on a local address never leave the kernel (they go through `lo`).
pub fn local_ip() -> Result<IpAddr, String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    // No packet is sent: connecting a UDP socket only picks the route and source.
    s.connect("192.0.2.1:9")
        .or_else(|_| s.connect("10.255.255.1:9"))
        .map_err(|e| format!("no non-loopback IPv4 route for Janus's ICE: {e}"))?;
    let ip = s.local_addr().map_err(|e| e.to_string())?.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        return Err("no non-loopback IPv4 address for Janus's ICE".into());
    }
    Ok(ip)
}

/// The installed Janus: its binary and library directory, or why it is missing.
pub fn find() -> Result<(PathBuf, PathBuf), String> {
    let bin = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("janus"))
        .find(|p| p.is_file())
        .ok_or("janus is not installed (apt-get install janus)")?;
    let lib = LIB_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("plugins/libjanus_videoroom.so").exists())
        .ok_or("janus's VideoRoom plugin was not found (apt-get install janus)")?;
    if !lib.join("transports/libjanus_websockets.so").exists() {
        return Err("janus's WebSocket transport was not found".into());
    }
    Ok((bin, lib))
}

impl JanusProcess {
    /// Writes the configuration and starts Janus on a free loopback port; waits until
    /// its WebSocket API accepts connections.
    pub fn start() -> Result<Self, String> {
        let (bin, lib) = find()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port: {e}"))?
            .port();
        let dir =
            std::env::temp_dir().join(format!("prism-load-janus-{}-{port}", std::process::id()));
        let media_ip = local_ip()?;
        write_config(&dir, &lib, port, media_ip)
            .map_err(|e| format!("janus config in {}: {e}", dir.display()))?;
        let log = std::fs::File::create(dir.join("janus.log")).map_err(|e| e.to_string())?;
        let conf = dir.join("conf");
        let child = Command::new(&bin)
            .arg("-C")
            .arg(conf.join("janus.jcfg"))
            .arg("-F")
            .arg(&conf)
            .arg("--disable-colors")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut j = Self {
            child,
            dir,
            addr: ([127, 0, 0, 1], port).into(),
            media_ip,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(j.addr).is_ok() {
                return Ok(j);
            }
            if let Ok(Some(status)) = j.child.try_wait() {
                return Err(format!("janus exited ({status}): {}", j.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!("janus did not listen in 20 s: {}", j.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("janus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(8).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }
}

impl Drop for JanusProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_config(dir: &Path, lib: &Path, port: u16, ip: IpAddr) -> std::io::Result<()> {
    for sub in ["conf", "plugins", "transports", "none"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::os::unix::fs::symlink(
        lib.join("plugins/libjanus_videoroom.so"),
        dir.join("plugins/libjanus_videoroom.so"),
    )?;
    std::os::unix::fs::symlink(
        lib.join("transports/libjanus_websockets.so"),
        dir.join("transports/libjanus_websockets.so"),
    )?;
    let d = dir.display();
    std::fs::write(
        dir.join("conf/janus.jcfg"),
        format!(
            r#"general: {{
	configs_folder = "{d}/conf"
	plugins_folder = "{d}/plugins"
	transports_folder = "{d}/transports"
	events_folder = "{d}/none"
	loggers_folder = "{d}/none"
	debug_level = 3
	event_loops = 1
	session_timeout = 60
}}
certificates: {{
}}
media: {{
}}
nat: {{
	ice_enforce_list = "{ip}"
	ignore_mdns = true
}}
plugins: {{
}}
transports: {{
}}
events: {{
	broadcast = false
}}
"#
        ),
    )?;
    std::fs::write(
        dir.join("conf/janus.plugin.videoroom.jcfg"),
        "general: {\n}\n",
    )?;
    std::fs::write(
        dir.join("conf/janus.transport.websockets.jcfg"),
        format!(
            "general: {{\n\tjson = \"plain\"\n\tws = true\n\tws_port = {port}\n\tws_interface = \"lo\"\n\twss = false\n}}\nadmin: {{\n\tadmin_ws = false\n\tadmin_wss = false\n}}\n"
        ),
    )?;
    Ok(())
}

/// One Janus session on its own WebSocket.
pub struct JanusSignal {
    ws: WebSocket<TcpStream>,
    session: u64,
    next_tx: u64,
    last_sent: Instant,
    /// When the socket opened (start of the join time).
    pub opened_at: Instant,
    closed: bool,
}

impl JanusSignal {
    /// Opens a WebSocket (`janus-protocol`) and creates a session.
    pub fn connect(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| e.to_string())?;
        let mut req = format!("ws://{addr}/")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "janus-protocol".parse().map_err(|_| "header")?,
        );
        let (ws, _) =
            tungstenite::client(req, stream).map_err(|e| format!("janus upgrade: {e}"))?;
        let mut s = Self {
            ws,
            session: 0,
            next_tx: 0,
            last_sent: Instant::now(),
            opened_at: Instant::now(),
            closed: false,
        };
        let r = s.call(json!({"janus": "create"}))?;
        s.session = r["data"]["id"].as_u64().ok_or("create: no session id")?;
        Ok(s)
    }

    /// Sends a request and waits for its final answer (`success` or `event`, skipping
    /// the `ack`); `error`s and plugin errors are an `Err`.
    pub fn call(&mut self, mut msg: Value) -> Result<Value, String> {
        self.next_tx += 1;
        let tx = format!("t{}", self.next_tx);
        msg["transaction"] = json!(tx);
        if self.session != 0 {
            msg["session_id"] = json!(self.session);
        }
        let what = msg["body"]["request"]
            .as_str()
            .or(msg["janus"].as_str())
            .unwrap_or("request")
            .to_string();
        self.ws
            .send(Message::text(msg.to_string()))
            .map_err(|e| format!("janus {what}: send: {e}"))?;
        self.last_sent = Instant::now();
        let deadline = Instant::now() + RESPONSE_WAIT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .map_err(|e| format!("janus {what}: not JSON: {e}"))?;
                    if v["transaction"] != tx.as_str() {
                        continue; // an event for someone else, or a keep-alive ack
                    }
                    match v["janus"].as_str() {
                        Some("ack") => continue,
                        Some("error") => return Err(format!("janus {what}: {}", v["error"])),
                        _ => {}
                    }
                    let data = &v["plugindata"]["data"];
                    if data.get("error").is_some() {
                        return Err(format!("janus {what}: {}", data["error"]));
                    }
                    return Ok(v);
                }
                Ok(Message::Close(f)) => return Err(format!("janus {what}: closed: {f:?}")),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(format!("janus {what}: read: {e}")),
            }
        }
        Err(format!("janus {what}: no answer in {RESPONSE_WAIT:?}"))
    }

    /// Attaches a VideoRoom handle.
    pub fn attach(&mut self) -> Result<u64, String> {
        let r = self.call(json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}))?;
        r["data"]["id"]
            .as_u64()
            .ok_or("attach: no handle id".into())
    }

    /// A VideoRoom request on `handle` (with a JSEP when given).
    pub fn message(
        &mut self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<Value, String> {
        let mut m = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        self.call(m)
    }

    /// Tells Janus the client's candidates are all in its SDP.
    pub fn trickle_done(&mut self, handle: u64) -> Result<(), String> {
        self.next_tx += 1;
        let m = json!({"janus": "trickle", "session_id": self.session, "handle_id": handle,
                       "transaction": format!("t{}", self.next_tx),
                       "candidate": {"completed": true}});
        self.ws
            .send(Message::text(m.to_string()))
            .map_err(|e| format!("janus trickle: {e}"))
    }

    /// Reads what is waiting without blocking and keeps the session alive; false once
    /// closed.
    pub fn pump(&mut self) -> bool {
        if self.closed {
            return false;
        }
        if self.last_sent.elapsed() >= KEEPALIVE {
            self.next_tx += 1;
            let m = json!({"janus": "keepalive", "session_id": self.session,
                           "transaction": format!("k{}", self.next_tx)});
            if self.ws.send(Message::text(m.to_string())).is_err() {
                self.closed = true;
                return false;
            }
            self.last_sent = Instant::now();
        }
        let _ = self.ws.get_mut().set_nonblocking(true);
        loop {
            match self.ws.read() {
                Ok(Message::Close(_)) => {
                    self.closed = true;
                    break;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.closed = true;
                    break;
                }
            }
        }
        let _ = self.ws.flush();
        let _ = self.ws.get_mut().set_nonblocking(false);
        !self.closed
    }

    /// Destroys the session (best effort: the run is over).
    pub fn leave(&mut self) {
        if !self.closed {
            let _ = self.call(json!({"janus": "destroy"}));
            let _ = self.ws.close(None);
            let _ = self.ws.flush();
            self.closed = true;
        }
    }
}
