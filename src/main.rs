//! The `prism` binary: `serve` (the default), `dev-token`, `check-config`.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use prism::cli::{Cli, Command, DevTokenArgs, ServeArgs};
use prism::server::Server;

fn init_logging() {
    let env = env_logger::Env::default().filter_or("RUST_LOG", "info,str0m=warn");
    env_logger::Builder::from_env(env)
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
    let result = match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
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
    server.shutdown();
    Ok(())
}

fn dev_token(args: &DevTokenArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = prism::config::load(&args.serve)?;
    let Some(key) = config.secrets.dev_token_key.as_ref().filter(|_| config.mode.is_dev()) else {
        return Err("dev-token works only in dev mode".into());
    };
    let user = prism::ids::UserUid::parse(&args.user).map_err(|e| format!("--user: {e}"))?;
    let perms: Vec<String> = args
        .perm
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    let channels = args
        .channel
        .iter()
        .map(|c| (c.clone(), perms.clone()))
        .collect();
    let channels = prism::api::dev_channels(&channels).map_err(|e| format!("--channel/--perm: {e}"))?;
    for r in &args.role {
        prism::ids::check_id(r, 64).map_err(|e| format!("--role: {e}"))?;
    }
    let token = prism::auth::mint_dev_session_token(
        key,
        &user,
        &channels,
        &args.role,
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
