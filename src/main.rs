//! The `prism` binary: `serve` (the default), `dev-token`, `check-config`.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use prism::cli::{Cli, Command, DevTokenArgs, ServeArgs};
use prism::server::Server;

/// Longest a graceful stop (SIGTERM, SIGINT) may take before the process exits anyway.
const SHUTDOWN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `PRISM_LOG` (or `RUST_LOG`) sets the filter; default `info`, str0m quieter.
fn init_logging() {
    let filter = std::env::var("PRISM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,str0m=warn".to_string());
    env_logger::Builder::new()
        .parse_filters(&filter)
        .format_timestamp_millis()
        .init();
}

#[expect(clippy::disallowed_methods, reason = "the CLI reads the wall clock")]
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command_or_serve() {
        Command::Serve(args) => serve(&args),
        Command::DevToken(args) => dev_token(&args),
        Command::CheckConfig(args) => check_config(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prism: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = prism::config::load(args)?;
    if config.fresh_admin_key {
        // Printed once, when generated; it stays in the data directory (mode 0600).
        eprintln!(
            "prism: generated admin key (stored in {}): {}",
            config.data_dir.join("secrets.toml").display(),
            config.secrets.admin_key.expose()
        );
    }
    let server = Server::start(config)?;
    println!("prism listening on {}", server.local_addr());
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            if let Err(e) = server.reload_tls() {
                log::error!("TLS reload failed, keeping the old certificate: {e}");
            }
            continue;
        }
        break;
    }
    // The shutdown is bounded by construction; this is the backstop if something
    // (a wedged disk under the store) holds it up.
    std::thread::Builder::new()
        .name("prism-shutdown-watchdog".into())
        .spawn(|| {
            std::thread::sleep(SHUTDOWN_LIMIT);
            eprintln!("prism: shutdown took longer than {SHUTDOWN_LIMIT:?}; exiting");
            std::process::exit(1);
        })?;
    server.shutdown();
    Ok(())
}

fn dev_token(args: &DevTokenArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = prism::config::load(&args.serve)?;
    let Some(key) = config
        .secrets
        .dev_token_key
        .as_ref()
        .filter(|_| config.mode.is_dev())
    else {
        return Err("dev-token works only in dev mode".into());
    };
    let perms: Vec<String> = args.perms.iter().map(|p| p.as_str().to_string()).collect();
    let channels = args
        .channels
        .iter()
        .map(|c| (c.clone(), perms.clone()))
        .collect();
    let channels =
        prism::api::dev_channels(&channels).map_err(|e| format!("--channel/--perm: {e}"))?;
    let token = prism::auth::mint_dev_session_token(
        key,
        &args.user,
        &channels,
        &args.roles,
        unix_now(),
        args.ttl_s,
    );
    println!("{token}");
    Ok(())
}

fn check_config(args: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = prism::config::load(args)?;
    println!("{}", config.redacted_summary());
    println!("configuration OK");
    Ok(())
}
