//! Loading tests: defaults, layering and precedence, every refusal naming its key,
//! dev secrets on disk, production rules, the Origin check, the capabilities body, and
//! that `prism.example.toml` and `docs/configuration.md` cover every key.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use base64::Engine;

use super::raw::{all_keys, env_var_name};
use super::*;
use crate::secret::random_hex;

/// A private scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("prism-config-test-{}", random_hex(8)));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, text).unwrap();
        p
    }

    /// Serve args with the data dir inside the scratch directory.
    fn args(&self) -> ServeArgs {
        ServeArgs {
            data_dir: Some(self.path("data")),
            ..ServeArgs::default()
        }
    }

    fn args_with_file(&self, text: &str) -> ServeArgs {
        ServeArgs {
            config: Some(self.write("prism.toml", text)),
            ..self.args()
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const K1: &str = "ticket-key-0123456789abcdefghijklmnop";
const K2: &str = "admin-key-0123456789abcdefghijklmnopq";
const K3: &str = "turn-secret-0123456789abcdefghijklmn";
const K4: &str = "session-secret-0123456789abcdefghijk";

/// A valid production environment on loopback (no TLS needed there).
fn prod_env() -> Vec<(String, String)> {
    env(&[
        ("PRISM_MODE", "production"),
        ("PRISM_LISTEN", "127.0.0.1:8443"),
        ("PRISM_PUBLIC_URL", "https://rtc.example.org"),
        ("PRISM_SECRETS__TICKET_KEY", K1),
        ("PRISM_SECRETS__ADMIN_KEY", K2),
        ("PRISM_SESSION_TOKENS__HS256_SECRET", K4),
        ("PRISM_MEDIA__PUBLIC_IP", "203.0.113.7"),
    ])
}

fn with(mut base: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        base.retain(|(n, _)| n != k);
        base.push((k.to_string(), v.to_string()));
    }
    base
}

fn without(mut base: Vec<(String, String)>, name: &str) -> Vec<(String, String)> {
    base.retain(|(n, _)| n != name);
    base
}

fn invalid_key(r: Result<Config, ConfigError>) -> String {
    match r {
        Err(ConfigError::Invalid { key, reason }) => {
            assert!(!reason.is_empty());
            key
        }
        Err(other) => panic!("expected Invalid, got {other}"),
        Ok(_) => panic!("expected Invalid, got a config"),
    }
}

#[test]
fn defaults_with_no_file_are_dev_mode() {
    let s = Scratch::new();
    let c = load_with(&s.args(), &[]).unwrap();
    assert_eq!(c.mode, Mode::Dev);
    assert!(c.mode.is_dev());
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.public_url, "http://127.0.0.1:8080");
    assert_eq!(c.signaling_url(), "ws://127.0.0.1:8080/v1/rtc/signaling");
    assert_eq!(c.front_threads, 2);
    assert!(c.tls.is_none());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(256));
    assert_eq!(c.media.workers, cpus);
    assert_eq!(c.media.bind_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(c.media.port_base, 0);
    assert_eq!(c.media.public_ip, None);
    assert_eq!(c.origins.allowed, ["http://127.0.0.1:8080"]);
    assert!(c.origins.allow_localhost_any_port);
    assert_eq!(c.session_tokens.algorithm, TokenAlgorithm::Hs256);
    assert_eq!(
        c.session_tokens.hs256_secret.as_ref().map(|k| k.expose()),
        c.secrets.dev_token_key.as_ref().map(|k| k.expose())
    );
    assert!(c.secrets.dev_token_key.is_some());
    assert!(c.fresh_admin_key);
    assert!(c.ice_servers.is_empty());
    assert_eq!(c.ice_transport_policy, "all");
    assert_eq!((c.turn_ttl_s, c.ticket_ttl_s), (86_400, 60));
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.limits.max_frame_bytes, 262_144);
    assert_eq!(c.limits.join_timeout_ms, 12_000);
    assert_eq!(c.limits.http_body_max, 65_536);
    assert_eq!(c.reconnect_backoff_ms, [250, 500, 1000, 2000, 5000]);
    assert!(c.metrics_public);
    assert_eq!(c.audit_retention_days, 30);
    assert!(c.call_page);
    assert_eq!(c.call_page_path, "/");
    assert!(c.server_id.starts_with("prism-") && c.server_id.len() == 14);
}

#[test]
fn file_values_are_parsed() {
    let s = Scratch::new();
    let args = s.args_with_file(
        r#"
listen = "127.0.0.1:9000"
public_url = "http://rtc.test:9000/"
server_id = "node-a"
front_threads = 4
ticket_ttl_s = 30
reconnect_backoff_ms = [100, 100, 400]
metrics_public = false
call_page = false
call_page_path = "/call"
ice_transport_policy = "relay"

[media]
workers = 3
port_base = 40000
bind_ip = "0.0.0.0"
public_ip = "198.51.100.4"

[origins]
allowed = ["https://App.Example.org:443", "http://localhost:3000"]
allow_localhost_any_port = false

[limits]
join_timeout_ms = 5000
participants_per_channel = 8

[[ice_servers]]
urls = ["stun:stun.example.org:3478"]

[[ice_servers]]
urls = ["turns:turn.example.org:5349?transport=tcp"]
turn = true
"#,
    );
    let c = load_with(&args, &[]).unwrap();
    assert_eq!(c.listen.port(), 9000);
    assert_eq!(c.public_url, "http://rtc.test:9000");
    assert_eq!(c.server_id, "node-a");
    assert_eq!(c.front_threads, 4);
    assert_eq!(c.ticket_ttl_s, 30);
    assert_eq!(c.reconnect_backoff_ms, [100, 100, 400]);
    assert!(!c.metrics_public && !c.call_page);
    assert_eq!(c.call_page_path, "/call");
    assert_eq!(c.ice_transport_policy, "relay");
    assert_eq!(c.media.workers, 3);
    assert_eq!(c.media.port_base, 40_000);
    assert_eq!(c.media.public_ip, Some("198.51.100.4".parse().unwrap()));
    assert_eq!(
        c.origins.allowed,
        ["https://app.example.org", "http://localhost:3000"]
    );
    assert!(!c.origins.allow_localhost_any_port);
    assert_eq!(c.limits.join_timeout_ms, 5000);
    assert_eq!(c.limits.participants_per_channel, 8);
    assert_eq!(c.limits.idle_timeout_ms, 30_000);
    assert_eq!(
        c.ice_servers,
        [
            IceServer {
                urls: vec!["stun:stun.example.org:3478".into()],
                turn: false
            },
            IceServer {
                urls: vec!["turns:turn.example.org:5349?transport=tcp".into()],
                turn: true
            },
        ]
    );
    // A configured server id is used as is, nothing generated.
    assert!(!s.path("data").join(SERVER_ID_FILE).exists());
}

#[test]
fn environment_overrides_the_file() {
    let s = Scratch::new();
    let args = s.args_with_file("[limits]\njoin_timeout_ms = 5000\nidle_timeout_ms = 40000\n");
    let e = env(&[
        ("PRISM_LIMITS__JOIN_TIMEOUT_MS", "7000"),
        ("PRISM_LISTEN", "127.0.0.1:9100"),
        (
            "PRISM_ORIGINS__ALLOWED",
            "https://a.example, https://b.example:8443",
        ),
        ("PRISM_RECONNECT_BACKOFF_MS", "10,20"),
        ("PRISM_METRICS_PUBLIC", "false"),
        (
            "PRISM_ICE_SERVERS",
            r#"[{ urls = ["turn:turn.example.org:3478"] }]"#,
        ),
        ("PRISM_SECRETS__TURN_SECRET", K3),
        ("PRISM_LOG", "debug"),
        ("HOME", "/root"),
    ]);
    let c = load_with(&args, &e).unwrap();
    assert_eq!(c.limits.join_timeout_ms, 7000);
    assert_eq!(c.limits.idle_timeout_ms, 40_000);
    assert_eq!(c.listen.port(), 9100);
    assert_eq!(c.public_url, "http://127.0.0.1:9100");
    assert_eq!(
        c.origins.allowed,
        ["https://a.example", "https://b.example:8443"]
    );
    assert_eq!(c.reconnect_backoff_ms, [10, 20]);
    assert!(!c.metrics_public);
    assert!(c.ice_servers[0].turn);
    assert_eq!(c.secrets.turn_secret.expose(), K3.as_bytes());
}

#[test]
fn flags_override_environment_and_file() {
    let s = Scratch::new();
    let mut args = s.args_with_file("listen = \"127.0.0.1:7001\"\nfront_threads = 3\n");
    let e = env(&[
        ("PRISM_LISTEN", "127.0.0.1:7002"),
        ("PRISM_FRONT_THREADS", "5"),
    ]);
    assert_eq!(load_with(&args, &[]).unwrap().listen.port(), 7001);
    assert_eq!(load_with(&args, &e).unwrap().listen.port(), 7002);
    args.listen = Some("127.0.0.1:7003".parse().unwrap());
    args.front_threads = Some(7);
    args.media_workers = Some(2);
    args.public_url = Some("http://dev.test:7003".into());
    let c = load_with(&args, &e).unwrap();
    assert_eq!(c.listen.port(), 7003);
    assert_eq!(c.front_threads, 7);
    assert_eq!(c.media.workers, 2);
    assert_eq!(c.public_url, "http://dev.test:7003");
}

#[test]
fn the_config_file_can_come_from_prism_config() {
    let s = Scratch::new();
    let path = s.write("other.toml", "front_threads = 9\n");
    let e = env(&[("PRISM_CONFIG", path.to_str().unwrap())]);
    assert_eq!(load_with(&s.args(), &e).unwrap().front_threads, 9);
    let e = env(&[("PRISM_CONFIG", "")]);
    assert_eq!(invalid_key(load_with(&s.args(), &e)), "PRISM_CONFIG");
    let e = env(&[("PRISM_CONFIG", s.path("missing.toml").to_str().unwrap())]);
    assert!(matches!(
        load_with(&s.args(), &e),
        Err(ConfigError::Io { .. })
    ));
}

#[test]
fn each_bad_value_names_its_key() {
    let cases: &[(&str, &str)] = &[
        ("mode = \"prod\"", "mode"),
        ("listen = \"localhost:80\"", "listen"),
        ("front_threads = 0", "front_threads"),
        ("front_threads = 65", "front_threads"),
        ("public_url = \"ftp://x\"", "public_url"),
        (
            "public_url = \"http://localhost:80@evil.com\"",
            "public_url",
        ),
        ("server_id = \"has space\"", "server_id"),
        ("ticket_ttl_s = 1", "ticket_ttl_s"),
        ("turn_ttl_s = 10", "turn_ttl_s"),
        ("audit_retention_days = 0", "audit_retention_days"),
        ("reconnect_backoff_ms = []", "reconnect_backoff_ms"),
        ("reconnect_backoff_ms = [500, 100]", "reconnect_backoff_ms"),
        ("reconnect_backoff_ms = [-1]", "reconnect_backoff_ms"),
        ("call_page_path = \"call\"", "call_page_path"),
        ("call_page_path = \"\"", "call_page_path"),
        ("call_page_path = \"/a b\"", "call_page_path"),
        ("call_page_path = \"/a//b\"", "call_page_path"),
        ("call_page_path = \"/x/../v1\"", "call_page_path"),
        ("call_page_path = \"/v1/call\"", "call_page_path"),
        ("call_page_path = \"/web\"", "call_page_path"),
        ("call_page_path = \"/metrics\"", "call_page_path"),
        ("ice_transport_policy = \"some\"", "ice_transport_policy"),
        ("ice_transport_policy = \"relay\"", "ice_transport_policy"),
        ("[tls]\ncert_file = \"/nonexistent/c.pem\"", "tls.key_file"),
        (
            "[tls]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"/nonexistent/k.pem\"",
            "tls.cert_file",
        ),
        ("[media]\nworkers = 0", "media.workers"),
        ("[media]\nworkers = 257", "media.workers"),
        ("[media]\nbind_ip = \"nope\"", "media.bind_ip"),
        ("[media]\nbind_ip = \"0.0.0.0\"", "media.public_ip"),
        ("[media]\npublic_ip = \"0.0.0.0\"", "media.public_ip"),
        ("[media]\nport_base = 80", "media.port_base"),
        ("[media]\nport_base = 65535\nworkers = 2", "media.port_base"),
        (
            "[origins]\nallowed = [\"https://a.org/\"]",
            "origins.allowed",
        ),
        ("[origins]\nallowed = [\"*\"]", "origins.allowed"),
        ("[limits]\njoin_timeout_ms = 5", "limits.join_timeout_ms"),
        ("[limits]\nmax_frame_bytes = 0", "limits.max_frame_bytes"),
        (
            "[limits]\nws_ping_interval_ms = 30000",
            "limits.ws_ping_interval_ms",
        ),
        (
            "[limits]\nmax_connections = 10\nmax_connections_per_ip = 11",
            "limits.max_connections_per_ip",
        ),
        ("[[ice_servers]]\nurls = []", "ice_servers"),
        ("[[ice_servers]]\nurls = [\"http://x\"]", "ice_servers"),
        ("[[ice_servers]]\nurls = [\"stun://x\"]", "ice_servers"),
        ("[[ice_servers]]\nurls = [\"stun:x:99999\"]", "ice_servers"),
        (
            "[[ice_servers]]\nurls = [\"stun:x?transport=tcp\"]",
            "ice_servers",
        ),
        (
            "[[ice_servers]]\nurls = [\"stun:a\", \"turn:b\"]",
            "ice_servers",
        ),
        (
            "[[ice_servers]]\nurls = [\"turn:b\"]\nturn = false",
            "ice_servers",
        ),
        (
            "[[ice_servers]]\nurls = [\"stun:b\"]\nturn = true",
            "ice_servers",
        ),
        ("[secrets]\nadmin_key = \"short\"", "secrets.admin_key"),
        (
            "[secrets]\nadmin_key = \"has a space in it 0123456789abcdefgh\"",
            "secrets.admin_key",
        ),
        (
            "[secrets]\nticket_key_file = \"/nonexistent/key\"",
            "secrets.ticket_key_file",
        ),
        (
            "[session_tokens]\nalgorithm = \"none\"",
            "session_tokens.algorithm",
        ),
        (
            "[session_tokens]\nalgorithm = \"es256\"",
            "session_tokens.public_key_file",
        ),
        (
            "[session_tokens]\npublic_key_file = \"/etc/hostname\"",
            "session_tokens.public_key_file",
        ),
        (
            "[session_tokens]\naudience = \"\"",
            "session_tokens.audience",
        ),
    ];
    for (text, key) in cases {
        let s = Scratch::new();
        let r = load_with(&s.args_with_file(text), &[]);
        let display = match &r {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{text:?} was accepted"),
        };
        assert_eq!(&invalid_key(r), key, "for {text:?}");
        assert!(
            display.starts_with(&format!("config: {key}: ")),
            "{display}"
        );
        // A refused configuration writes nothing.
        assert!(!s.path("data").exists(), "{text:?} created the data dir");
    }
}

#[test]
fn an_empty_data_dir_is_refused() {
    let args = ServeArgs {
        data_dir: Some(PathBuf::new()),
        ..ServeArgs::default()
    };
    assert_eq!(invalid_key(load_with(&args, &[])), "data_dir");
    let s = Scratch::new();
    let file = s.write("file-not-dir", "");
    let args = ServeArgs {
        data_dir: Some(file),
        ..ServeArgs::default()
    };
    assert_eq!(invalid_key(load_with(&args, &[])), "data_dir");
}

#[test]
fn the_error_message_has_the_documented_form() {
    let s = Scratch::new();
    let err = load_with(&s.args_with_file("[limits]\njoin_timeout_ms = 5"), &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config: limits.join_timeout_ms: must be between 1000 and 600000 (got 5)"
    );
    let e = env(&[("PRISM_LIMITS__JOIN_TIMEOUT_MS", "5")]);
    let err = load_with(&s.args(), &e).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config: limits.join_timeout_ms: must be between 1000 and 600000 (got 5) \
         (set by PRISM_LIMITS__JOIN_TIMEOUT_MS)"
    );
    let args = ServeArgs {
        front_threads: Some(0),
        ..s.args()
    };
    assert!(
        load_with(&args, &[])
            .unwrap_err()
            .to_string()
            .ends_with("(set by --front-threads)")
    );
}

#[test]
fn badly_typed_environment_values_name_the_key() {
    let s = Scratch::new();
    for (var, value, key) in [
        ("PRISM_FRONT_THREADS", "two", "front_threads"),
        ("PRISM_METRICS_PUBLIC", "yes", "metrics_public"),
        ("PRISM_RECONNECT_BACKOFF_MS", "1,,2", "reconnect_backoff_ms"),
        (
            "PRISM_ICE_SERVERS",
            "[{ url = [\"stun:x\"] }]",
            "ice_servers",
        ),
        ("PRISM_ICE_SERVERS", "not toml", "ice_servers"),
        ("PRISM_MODE", "staging", "mode"),
    ] {
        let e = env(&[(var, value)]);
        let r = load_with(&s.args(), &e);
        let text = r.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(invalid_key(r), key, "{var}={value}");
        assert!(text.contains(var), "{text}");
    }
}

#[test]
fn unknown_keys_and_variables_are_refused() {
    let s = Scratch::new();
    for text in [
        "lisen = \"127.0.0.1:1\"",
        "[limits]\njoin_timeout = 1",
        "[nope]\n",
    ] {
        match load_with(&s.args_with_file(text), &[]) {
            Err(ConfigError::Toml { message, .. }) => {
                assert!(message.contains("unknown field"), "{message}");
            }
            other => panic!("{text:?}: {:?}", other.map(|_| ())),
        }
    }
    match load_with(&s.args_with_file("front_threads = \"2\""), &[]) {
        Err(ConfigError::Toml { message, .. }) => assert!(message.contains("front_threads")),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let e = env(&[("PRISM_LIMITS__JOIN_TIMEOUT", "5000")]);
    match load_with(&s.args(), &e) {
        Err(e @ ConfigError::UnknownEnv { .. }) => {
            assert!(e.to_string().contains("PRISM_LIMITS__JOIN_TIMEOUT "));
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // Documented non-config variables pass.
    let e = env(&[("PRISM_LOG", "info")]);
    assert!(load_with(&s.args(), &e).is_ok());
}

#[test]
fn dev_secrets_are_generated_once_and_kept_private() {
    let s = Scratch::new();
    let first = load_with(&s.args(), &[]).unwrap();
    assert!(first.fresh_admin_key);
    assert_eq!(first.secrets.admin_key.expose().len(), 43);
    assert_eq!(first.secrets.ticket_key.expose().len(), 43);
    let data = s.path("data");
    let dir_mode = fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let file = data.join(SECRETS_FILE);
    let file_mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(file_mode, 0o600);

    let second = load_with(&s.args(), &[]).unwrap();
    assert!(!second.fresh_admin_key);
    assert_eq!(second.server_id, first.server_id);
    assert_eq!(
        second.secrets.admin_key.expose(),
        first.secrets.admin_key.expose()
    );
    assert_eq!(
        second.secrets.ticket_key.expose(),
        first.secrets.ticket_key.expose()
    );
    assert_eq!(
        second.secrets.turn_secret.expose(),
        first.secrets.turn_secret.expose()
    );
    assert_eq!(
        second.secrets.dev_token_key.as_ref().unwrap().expose(),
        first.secrets.dev_token_key.as_ref().unwrap().expose()
    );
    assert_ne!(
        first.secrets.ticket_key.expose(),
        first.secrets.turn_secret.expose()
    );

    // A configured secret wins over the stored one and is not written.
    let e = env(&[("PRISM_SECRETS__ADMIN_KEY", K2)]);
    let third = load_with(&s.args(), &e).unwrap();
    assert_eq!(third.secrets.admin_key.expose(), K2);
    assert!(!third.fresh_admin_key);
    assert!(!fs::read_to_string(&file).unwrap().contains(K2));

    // A secrets file others can read is refused, not used.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    match load_with(&s.args(), &[]) {
        Err(ConfigError::Io { path, .. }) => assert_eq!(path, file),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn only_missing_dev_secrets_are_generated() {
    let s = Scratch::new();
    let e = env(&[("PRISM_SECRETS__ADMIN_KEY", K2)]);
    let c = load_with(&s.args(), &e).unwrap();
    assert!(!c.fresh_admin_key);
    let stored = fs::read_to_string(s.path("data").join(SECRETS_FILE)).unwrap();
    assert!(stored.contains("ticket_key") && !stored.contains("admin_key"));
    // Dropping the configured key later generates one then, once.
    assert!(load_with(&s.args(), &[]).unwrap().fresh_admin_key);
    assert!(!load_with(&s.args(), &[]).unwrap().fresh_admin_key);
}

#[test]
fn secrets_can_come_from_files() {
    let s = Scratch::new();
    let path = s.write("ticket", &format!("{K1}\n"));
    let args = s.args_with_file(&format!(
        "[secrets]\nticket_key_file = {:?}\n",
        path.to_str().unwrap()
    ));
    let c = load_with(&args, &[]).unwrap();
    assert_eq!(c.secrets.ticket_key.expose(), K1.as_bytes());
    let args = s.args_with_file(&format!(
        "[secrets]\nticket_key = \"{K1}\"\nticket_key_file = {:?}\n",
        path.to_str().unwrap()
    ));
    assert_eq!(
        invalid_key(load_with(&args, &[])),
        "secrets.ticket_key_file"
    );
}

#[test]
fn production_accepts_a_complete_loopback_setup() {
    let s = Scratch::new();
    let c = load_with(&s.args(), &prod_env()).unwrap();
    assert_eq!(c.mode, Mode::Production);
    assert_eq!(c.public_url, "https://rtc.example.org");
    assert_eq!(c.signaling_url(), "wss://rtc.example.org/v1/rtc/signaling");
    assert_eq!(c.origins.allowed, ["https://rtc.example.org"]);
    assert!(!c.origins.allow_localhost_any_port);
    assert!(!c.call_page);
    assert!(c.secrets.dev_token_key.is_none());
    assert!(!c.fresh_admin_key);
    assert_eq!(c.secrets.admin_key.expose(), K2);
    assert_eq!(
        c.session_tokens.hs256_secret.as_ref().unwrap().expose(),
        K4.as_bytes()
    );
    assert_eq!(c.media.bind_ip, "0.0.0.0".parse::<IpAddr>().unwrap());
    assert!(!s.path("data").join(SECRETS_FILE).exists());
    assert!(s.path("data").join(SERVER_ID_FILE).exists());
}

#[test]
fn production_requires_tls_off_loopback() {
    let s = Scratch::new();
    let e = with(prod_env(), &[("PRISM_LISTEN", "0.0.0.0:8443")]);
    assert_eq!(invalid_key(load_with(&s.args(), &e)), "tls");
    let e = without(prod_env(), "PRISM_LISTEN");
    assert_eq!(invalid_key(load_with(&s.args(), &e)), "tls");

    let cert = s.write("cert.pem", "-----BEGIN CERTIFICATE-----\n");
    let key = s.write("key.pem", "-----BEGIN PRIVATE KEY-----\n");
    let e = with(
        without(prod_env(), "PRISM_LISTEN"),
        &[
            ("PRISM_TLS__CERT_FILE", cert.to_str().unwrap()),
            ("PRISM_TLS__KEY_FILE", key.to_str().unwrap()),
        ],
    );
    let c = load_with(&s.args(), &e).unwrap();
    assert_eq!(c.listen, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(c.tls.unwrap().cert_path, cert);

    let e = with(e, &[("PRISM_PUBLIC_URL", "http://rtc.example.org")]);
    assert_eq!(invalid_key(load_with(&s.args(), &e)), "public_url");
}

#[test]
fn production_refuses_what_is_missing_or_dev_only() {
    let s = Scratch::new();
    let cases: Vec<(Vec<(String, String)>, &str)> = vec![
        (without(prod_env(), "PRISM_PUBLIC_URL"), "public_url"),
        (
            without(prod_env(), "PRISM_SECRETS__TICKET_KEY"),
            "secrets.ticket_key",
        ),
        (
            without(prod_env(), "PRISM_SECRETS__ADMIN_KEY"),
            "secrets.admin_key",
        ),
        (
            without(prod_env(), "PRISM_SESSION_TOKENS__HS256_SECRET"),
            "session_tokens.hs256_secret",
        ),
        (
            with(prod_env(), &[("PRISM_SECRETS__DEV_TOKEN_KEY", K3)]),
            "secrets.dev_token_key",
        ),
        (
            with(
                prod_env(),
                &[("PRISM_ORIGINS__ALLOW_LOCALHOST_ANY_PORT", "true")],
            ),
            "origins.allow_localhost_any_port",
        ),
        (
            with(
                prod_env(),
                &[(
                    "PRISM_ICE_SERVERS",
                    r#"[{ urls = ["turns:t.example.org"] }]"#,
                )],
            ),
            "secrets.turn_secret",
        ),
        (
            without(prod_env(), "PRISM_MEDIA__PUBLIC_IP"),
            "media.public_ip",
        ),
        (
            with(prod_env(), &[("PRISM_SESSION_TOKENS__ALGORITHM", "rs256")]),
            "session_tokens.public_key_file",
        ),
    ];
    for (e, key) in cases {
        assert_eq!(invalid_key(load_with(&s.args(), &e)), key);
    }
    // With its secret, the TURN server is accepted.
    let e = with(
        prod_env(),
        &[
            (
                "PRISM_ICE_SERVERS",
                r#"[{ urls = ["turns:t.example.org"] }]"#,
            ),
            ("PRISM_SECRETS__TURN_SECRET", K3),
        ],
    );
    assert!(load_with(&s.args(), &e).is_ok());
}

#[test]
fn public_key_algorithms_read_and_check_the_pem() {
    let s = Scratch::new();
    // An Ed25519 SubjectPublicKeyInfo: fixed 12-byte prefix + 32-byte key.
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend([7u8; 32]);
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&der)
    );
    let key = s.write("ed.pem", &pem);
    let e = with(
        without(prod_env(), "PRISM_SESSION_TOKENS__HS256_SECRET"),
        &[
            ("PRISM_SESSION_TOKENS__ALGORITHM", "eddsa"),
            (
                "PRISM_SESSION_TOKENS__PUBLIC_KEY_FILE",
                key.to_str().unwrap(),
            ),
            ("PRISM_SESSION_TOKENS__AUDIENCE", "prism"),
        ],
    );
    let c = load_with(&s.args(), &e).unwrap();
    assert_eq!(c.session_tokens.algorithm, TokenAlgorithm::EdDsa);
    assert_eq!(
        c.session_tokens.public_key_pem.as_deref(),
        Some(pem.as_str())
    );
    assert!(c.session_tokens.hs256_secret.is_none());
    assert_eq!(c.session_tokens.audience.as_deref(), Some("prism"));

    // The hs256 secret is refused alongside a public-key algorithm.
    let e2 = with(e.clone(), &[("PRISM_SESSION_TOKENS__HS256_SECRET", K4)]);
    assert_eq!(
        invalid_key(load_with(&s.args(), &e2)),
        "session_tokens.hs256_secret"
    );
    // A file that is not a key for the algorithm is refused.
    let junk = s.write(
        "junk.pem",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    );
    let e3 = with(
        e,
        &[(
            "PRISM_SESSION_TOKENS__PUBLIC_KEY_FILE",
            junk.to_str().unwrap(),
        )],
    );
    assert_eq!(
        invalid_key(load_with(&s.args(), &e3)),
        "session_tokens.public_key_file"
    );
}

#[test]
fn origin_checks_follow_protocol_section_1() {
    let s = Scratch::new();
    let dev = load_with(&s.args(), &[]).unwrap();
    let prod = load_with(&s.args(), &prod_env()).unwrap();
    let table: &[(&str, bool, bool)] = &[
        // (origin, allowed in dev, allowed in production)
        ("http://127.0.0.1:8080", true, false),
        ("http://localhost:3000", true, false),
        ("http://localhost", true, false),
        ("http://127.0.0.1:5173", true, false),
        ("http://LOCALHOST:3000", true, false),
        ("https://rtc.example.org", false, true),
        ("https://rtc.example.org:443", false, true),
        ("https://RTC.example.org", false, true),
        ("https://rtc.example.org:8443", false, false),
        ("http://rtc.example.org", false, false),
        ("https://rtc.example.org/", false, false),
        ("https://rtc.example.org.evil.com", false, false),
        ("http://localhost.evil.com", false, false),
        ("http://localhost:80@evil.com", false, false),
        ("http://evil.com@localhost:80", false, false),
        ("https://localhost:x", false, false),
        ("https://localhost:3000", false, false),
        ("http://localhost:", false, false),
        ("http://localhost:0", false, false),
        ("http://localhost:65536", false, false),
        ("http://localhost:+80", false, false),
        ("http://127.0.0.2:8080", false, false),
        ("http://[::1]:8080", false, false),
        ("http://localhost:3000/path", false, false),
        ("http://localhost:3000?x", false, false),
        ("null", false, false),
        ("", false, false),
        ("localhost:3000", false, false),
        ("ws://localhost:3000", false, false),
        ("http://local host:3000", false, false),
    ];
    for (origin, in_dev, in_prod) in table {
        assert_eq!(dev.origin_allowed(origin), *in_dev, "dev: {origin:?}");
        assert_eq!(
            prod.origin_allowed(origin),
            *in_prod,
            "production: {origin:?}"
        );
    }
}

#[test]
fn capabilities_match_the_http_api_spec() {
    let s = Scratch::new();
    let e = with(
        prod_env(),
        &[
            ("PRISM_PUBLIC_URL", "https://example.org"),
            (
                "PRISM_ICE_SERVERS",
                r#"[{ urls = ["stun:stun.example.org:3478"] }, { urls = ["turns:turn.example.org:5349"] }]"#,
            ),
            ("PRISM_SECRETS__TURN_SECRET", K3),
        ],
    );
    let c = load_with(&s.args(), &e).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        r#"{"rtc": {"protocol_version": "1.0",
         "signaling_url": "wss://example.org/v1/rtc/signaling",
         "signaling_transport": "websocket",
         "topologies": ["sfu"],
         "features": {"voice": true, "video": true, "screenshare": true, "simulcast": true},
         "ice_servers": [{"urls": ["stun:stun.example.org:3478"]},
                         {"urls": ["turns:turn.example.org:5349"]}],
         "connection_policy": {"join_timeout_ms": 12000, "answer_timeout_ms": 10000,
                               "ice_restart_enabled": true,
                               "reconnect_backoff_ms": [250, 500, 1000, 2000, 5000]}}}"#,
    )
    .unwrap();
    assert_eq!(c.capabilities_json(), expected);
}

#[test]
fn a_path_prefix_reaches_the_signaling_url_but_not_the_origin() {
    let s = Scratch::new();
    let e = with(
        prod_env(),
        &[("PRISM_PUBLIC_URL", "https://example.org/rtc/")],
    );
    let c = load_with(&s.args(), &e).unwrap();
    assert_eq!(c.signaling_url(), "wss://example.org/rtc/v1/rtc/signaling");
    assert_eq!(c.origins.allowed, ["https://example.org"]);
}

#[test]
fn secrets_never_reach_debug_or_the_summary() {
    let s = Scratch::new();
    let c = load_with(&s.args(), &[]).unwrap();
    let debug = format!("{c:?}");
    let summary = c.redacted_summary();
    let dev_key =
        String::from_utf8(c.secrets.dev_token_key.clone().unwrap().expose().clone()).unwrap();
    let ticket = String::from_utf8(c.secrets.ticket_key.expose().clone()).unwrap();
    for secret in [c.secrets.admin_key.expose().as_str(), &dev_key, &ticket] {
        assert!(!debug.contains(secret));
        assert!(!summary.contains(secret));
    }
    assert!(summary.contains("admin_key = \"[redacted]\""));
    assert!(summary.contains("join_timeout_ms = 12000"));
    assert!(summary.contains(&format!("server_id = \"{}\"", c.server_id)));
}

/// `# key = value` lines of the example, uncommented, must form a valid file holding
/// exactly the registered keys.
#[test]
fn the_example_file_lists_every_key() {
    let example = include_str!("../../prism.example.toml");
    let mut uncommented = String::new();
    let mut section = String::new();
    let mut found = Vec::new();
    for line in example.lines() {
        let t = line.trim();
        let header = t.strip_prefix("# ").unwrap_or(t);
        if header.starts_with('[') {
            section = header.trim_matches(['[', ']']).to_string();
            uncommented.push_str(header);
        } else if let Some(rest) = t.strip_prefix("# ")
            && let Some((key, _)) = rest.split_once(" = ")
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            found.push(if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            });
            uncommented.push_str(rest);
        }
        uncommented.push('\n');
    }
    toml::from_str::<super::raw::RawConfig>(&uncommented)
        .unwrap_or_else(|e| panic!("the uncommented example does not parse: {e}"));
    found.sort();
    found.dedup();
    let mut expected: Vec<String> = all_keys().into_iter().map(|(k, _)| k).collect();
    expected.push("ice_servers.urls".into());
    expected.push("ice_servers.turn".into());
    expected.retain(|k| k != "ice_servers");
    expected.sort();
    assert_eq!(found, expected);
}

#[test]
fn the_reference_documents_every_key_and_variable() {
    let doc = include_str!("../../docs/configuration.md");
    for (key, _) in all_keys() {
        assert!(doc.contains(&format!("`{key}`")), "{key} is not documented");
        assert!(
            doc.contains(&env_var_name(&key)),
            "{} is not documented",
            env_var_name(&key)
        );
    }
    for var in NON_CONFIG_ENV_VARS {
        assert!(doc.contains(var), "{var} is not documented");
    }
}
