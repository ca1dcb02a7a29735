//! Shared test harness: an in-process Prism on real loopback sockets, a small
//! HTTP client, and a WebSocket signaling client (plain or TLS).
#![allow(dead_code, clippy::disallowed_methods)] // each test file uses a subset; tests own their clock

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism::server::Server;
use serde_json::{Value, json};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub mod peer;

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "prism-test-{tag}-{}-{}",
            std::process::id(),
            prism::secret::random_hex(6)
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running server with its own data directory.
pub struct TestServer {
    pub server: Option<Server>,
    pub config: prism::config::Config,
    pub addr: SocketAddr,
    pub admin_key: String,
    pub dir: TempDir,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl TestServer {
    /// Dev mode on 127.0.0.1, one worker, one front thread.
    pub fn start() -> Self {
        Self::with_env(&[])
    }

    /// As [`TestServer::start`] with extra `PRISM_*` settings.
    pub fn with_env(env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("srv");
        Self::in_dir(dir, env, None)
    }

    /// With a TOML config file (plus env overrides).
    pub fn with_config(toml: &str, env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("cfg");
        let path = dir.0.join("prism.toml");
        std::fs::write(&path, toml).unwrap();
        let p = path.to_string_lossy().into_owned();
        let mut all = vec![("PRISM_CONFIG", p.as_str())];
        all.extend_from_slice(env);
        Self::in_dir(dir, &all, None)
    }

    /// With TLS on a fresh self-signed certificate for 127.0.0.1.
    pub fn with_tls(env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("tls");
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("self-signed cert");
        let cert_path = dir.0.join("cert.pem");
        let key_path = dir.0.join("key.pem");
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let cp = cert_path.to_string_lossy().into_owned();
        let kp = key_path.to_string_lossy().into_owned();
        let mut all: Vec<(&str, &str)> = vec![
            ("PRISM_TLS__CERT_FILE", cp.as_str()),
            ("PRISM_TLS__KEY_FILE", kp.as_str()),
        ];
        all.extend_from_slice(env);
        Self::in_dir(dir, &all, Some(Arc::new(client)))
    }

    fn in_dir(dir: TempDir, env: &[(&str, &str)], tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        let data = dir.0.join("data").to_string_lossy().into_owned();
        let mut vars: Vec<(String, String)> = vec![
            ("PRISM_LISTEN".into(), "127.0.0.1:0".into()),
            ("PRISM_DATA_DIR".into(), data),
            ("PRISM_MEDIA__WORKERS".into(), "1".into()),
            ("PRISM_FRONT_THREADS".into(), "1".into()),
        ];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = prism::config::load_with(&Default::default(), &vars).expect("config");
        let admin_key = config.secrets.admin_key.expose().clone();
        let server = Server::start(config.clone()).expect("server starts");
        let addr = server.local_addr();
        Self {
            server: Some(server),
            config,
            addr,
            admin_key,
            dir,
            tls,
        }
    }

    /// Stops the server (graceful).
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }

    pub fn http(&self) -> Http {
        Http {
            addr: self.addr,
            tls: self.tls.clone(),
        }
    }

    /// A dev session token for `user` with these channel permissions.
    pub fn token(&self, user: &str, channels: Value) -> String {
        let (status, body) = self.http().post(
            "/v1/dev/session-token",
            None,
            &json!({"user_uid": user, "channels": channels}),
        );
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_string()
    }

    /// A join ticket for `channel` minted with `token`.
    pub fn ticket(&self, token: &str, channel: &str, device: &str) -> String {
        let (status, body) = self.http().post(
            &format!("/v1/rtc/channels/{channel}/join-ticket"),
            Some(token),
            &json!({"device_id": device}),
        );
        assert_eq!(status, 201, "{body}");
        body["ticket"].as_str().unwrap().to_string()
    }

    /// A signaling WebSocket.
    pub fn ws(&self) -> Ws {
        self.ws_with_headers(&[]).expect("websocket upgrade")
    }

    pub fn ws_with_headers(&self, headers: &[(&str, &str)]) -> Result<Ws, tungstenite::Error> {
        let stream = connect(self.addr, self.tls.clone());
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "{scheme}://{}/v1/rtc/signaling",
            self.addr
        ))
        .unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (ws, _) = tungstenite::client::client(req, stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => unreachable!("blocking socket"),
        })?;
        Ok(Ws { ws, next_id: 0 })
    }

    /// Token + ticket + socket + `rtc.join`: a joined client and its `rtc.joined`.
    pub fn join(&self, user: &str, device: &str, channel: &str) -> (Ws, Value) {
        let token = self.token(user, json!({ channel: ["speak", "video", "screenshare"] }));
        let ticket = self.ticket(&token, channel, device);
        let mut ws = self.ws();
        let joined = ws.request("rtc.join", channel, json!({"ticket": ticket}));
        assert_eq!(joined["type"], "rtc.joined", "{joined}");
        (ws, joined)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A byte stream that is plain TCP or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(b),
            Stream::Tls(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(b),
            Stream::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

pub fn connect(addr: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>) -> Stream {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_nodelay(true).unwrap();
    match tls {
        None => Stream::Plain(tcp),
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let conn = rustls::ClientConnection::new(cfg, name).unwrap();
            Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
        }
    }
}

/// One-request-per-connection HTTP client.
pub struct Http {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A raw HTTP response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl Http {
    /// Sends raw bytes and reads one response (Connection: close expected or
    /// Content-Length honoured).
    pub fn raw(&self, request: &[u8]) -> RawResponse {
        let mut s = connect(self.addr, self.tls.clone());
        s.write_all(request).unwrap();
        read_response(&mut s).expect("a response")
    }

    pub fn send(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> RawResponse {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = bearer {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        self.raw(req.as_bytes())
    }

    pub fn get(&self, path: &str, bearer: Option<&str>) -> (u16, Value) {
        let r = self.send("GET", path, bearer, None, &[]);
        (r.status, r.json())
    }

    pub fn post(&self, path: &str, bearer: Option<&str>, body: &Value) -> (u16, Value) {
        let r = self.send("POST", path, bearer, Some(body), &[]);
        (r.status, r.json())
    }
}

/// Reads one HTTP response from a stream.
pub fn read_response(s: &mut impl Read) -> Option<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
            let hs: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let len: usize = hs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            let status = resp.code.unwrap_or(0);
            while buf.len() < head + len {
                let n = s.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(RawResponse {
                status,
                headers: hs,
                body: buf[head..head + len].to_vec(),
            });
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A signaling client.
pub struct Ws {
    pub ws: WebSocket<Stream>,
    pub next_id: u64,
}

impl Ws {
    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_string())).expect("send");
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// Sends a request with a fresh request id; returns that id.
    pub fn send_request(&mut self, ty: &str, channel: &str, payload: Value) -> String {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        self.send_json(
            &json!({"type": ty, "request_id": id, "channel_id": channel, "payload": payload}),
        );
        id
    }

    /// Sends a request and returns its response (events before it are skipped).
    pub fn request(&mut self, ty: &str, channel: &str, payload: Value) -> Value {
        let id = self.send_request(ty, channel, payload);
        self.response_to(&id)
    }

    /// The next message answering `id`.
    pub fn response_to(&mut self, id: &str) -> Value {
        loop {
            let m = self.recv();
            if m["request_id"] == id {
                return m;
            }
        }
    }

    /// The next text message as JSON (panics on close or after 10 s).
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).expect("JSON"),
                Ok(Message::Close(c)) => panic!("closed: {c:?}"),
                Ok(_) => continue,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Reads until an event of this type arrives.
    pub fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let m = self.recv();
            if m["type"] == ty {
                return m;
            }
        }
    }

    /// Reads until the server closes; returns the close code (messages before it
    /// are returned in the vector).
    pub fn expect_close(&mut self) -> (u16, Vec<Value>) {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "no close within 20 s");
            match self.ws.read() {
                Ok(Message::Text(t)) => seen.push(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Message::Close(Some(f))) => return (u16::from(f.code), seen),
                Ok(Message::Close(None)) => return (u16::from(CloseCode::Status), seen),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => panic!("read failed before close: {e}"),
            }
        }
    }

    /// Whether nothing arrives within `d`.
    pub fn quiet_for(&mut self, d: Duration) -> Option<Value> {
        let s = self.ws.get_mut();
        let set = |s: &mut Stream, t| match s {
            Stream::Plain(s) => s.set_read_timeout(t).unwrap(),
            Stream::Tls(s) => s.sock.set_read_timeout(t).unwrap(),
        };
        set(s, Some(d));
        let r = match self.ws.read() {
            Ok(Message::Text(t)) => Some(serde_json::from_str(t.as_str()).unwrap()),
            _ => None,
        };
        set(self.ws.get_mut(), Some(Duration::from_secs(10)));
        r
    }
}
