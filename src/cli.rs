//! The command line: clap definitions of `prism`, `prism serve`, `prism check-config`
//! and `prism dev-token`, and nothing else — the binary's `main` parses with
//! [`Cli::parse`](clap::Parser::parse) and hands the [`ServeArgs`] to
//! [`crate::config::load`], which applies them over the environment and the file.
//!
//! Invariant: every value here is checked by clap as it is parsed (types, ids,
//! permission names, ranges), so a typo stops the program with a usage message before
//! anything starts. Configuration values that need the whole picture (mode-dependent
//! defaults, TLS, secrets) are checked by `config::load`, not here.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Mode;
use crate::ids::{ChannelId, UserUid, check_id};

/// Prism: a WebRTC selective forwarding unit for self-hosted community chat.
#[derive(Debug, Parser)]
#[command(
    name = "prism",
    version,
    after_help = "Without a subcommand, `prism` runs `prism serve` with default flags: with no \
config file and no PRISM_* variables that is dev mode on 127.0.0.1:8080 with data in ./data.\n\
Configuration precedence: flags > PRISM_* environment variables > config file > defaults \
(see docs/configuration.md). PRISM_LOG sets the log filter."
)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The command to run: the one given, or `serve` with default flags.
    pub fn command_or_serve(self) -> Command {
        self.command
            .unwrap_or_else(|| Command::Serve(ServeArgs::default()))
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the server (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Dev mode only: mint a session token signed with the dev token key; the last line
    /// of standard output is the token alone.
    DevToken(DevTokenArgs),
    /// Load and validate the configuration, print the effective values (secrets
    /// redacted) and exit; non-zero exit status when it is refused.
    CheckConfig(ServeArgs),
}

/// Flags that override the configuration file and `PRISM_*` variables.
#[derive(Clone, Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file [env: PRISM_CONFIG]; without one, defaults apply (dev mode).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// HTTP/WebSocket listen address (`listen`; dev default 127.0.0.1:8080, production 0.0.0.0:8443).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// `dev` or `production` (`mode`; default dev).
    #[arg(long, value_enum, value_name = "MODE")]
    pub mode: Option<Mode>,

    /// Data directory for the database, generated secrets and the server id (`data_dir`; default ./data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Number of media worker threads (`media.workers`; default: one per CPU).
    #[arg(long, value_name = "N")]
    pub media_workers: Option<usize>,

    /// Number of signaling front threads (`front_threads`; default 2).
    #[arg(long, value_name = "N")]
    pub front_threads: Option<usize>,

    /// Public IP address advertised in ICE candidates (`media.public_ip`).
    #[arg(long, value_name = "IP")]
    pub public_ip: Option<IpAddr>,

    /// Public base URL of this server, e.g. https://rtc.example.org (`public_url`).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
}

/// A permission a dev token may grant in its channels (`connect` is always granted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DevPermission {
    /// Publish microphone and screen audio.
    Speak,
    /// Publish a camera.
    Video,
    /// Publish a screen share.
    Screenshare,
}

impl DevPermission {
    /// The permission's name in token claims.
    pub fn as_str(self) -> &'static str {
        match self {
            DevPermission::Speak => "speak",
            DevPermission::Video => "video",
            DevPermission::Screenshare => "screenshare",
        }
    }
}

/// `prism dev-token`: what the minted session token grants.
#[derive(Clone, Debug, Args)]
pub struct DevTokenArgs {
    /// The token's subject (`user_uid`).
    #[arg(long, value_name = "USER_UID")]
    pub user: UserUid,

    /// A channel the token grants (repeatable, at least one); `*` means every channel.
    #[arg(long = "channel", value_name = "CHANNEL_ID", required = true, value_parser = parse_channel_scope)]
    pub channels: Vec<String>,

    /// Permissions granted in those channels besides `connect`, comma-separated.
    #[arg(
        long = "perm",
        value_name = "PERMS",
        value_enum,
        value_delimiter = ',',
        default_value = "speak,video,screenshare"
    )]
    pub perms: Vec<DevPermission>,

    /// A role claim (repeatable), e.g. `moderator`.
    #[arg(long = "role", value_name = "ROLE", value_parser = parse_role)]
    pub roles: Vec<String>,

    /// Token lifetime in seconds (1 to 2592000).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub ttl_s: u64,

    /// Same flags as `serve`, so the token is signed with that server's dev key.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// A channel id, or `*` for every channel.
fn parse_channel_scope(s: &str) -> Result<String, String> {
    if s == "*" {
        return Ok(s.to_string());
    }
    ChannelId::parse(s)
        .map(|c| c.as_str().to_string())
        .map_err(|e| format!("a channel id or `*`: {e}"))
}

/// Roles share the id alphabet, 1–64 characters.
fn parse_role(s: &str) -> Result<String, String> {
    check_id(s, 64).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_subcommand_means_serve_with_defaults() {
        let cli = Cli::try_parse_from(["prism"]).unwrap();
        let Command::Serve(args) = cli.command_or_serve() else {
            panic!("not serve");
        };
        assert!(args.config.is_none() && args.listen.is_none());
    }

    #[test]
    fn serve_flags_parse() {
        let cli = Cli::try_parse_from([
            "prism",
            "serve",
            "--config",
            "p.toml",
            "--listen",
            "0.0.0.0:9000",
            "--mode",
            "production",
            "--media-workers",
            "3",
            "--public-ip",
            "203.0.113.7",
        ])
        .unwrap();
        let Some(Command::Serve(a)) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(a.config, Some(PathBuf::from("p.toml")));
        assert_eq!(a.listen, Some("0.0.0.0:9000".parse().unwrap()));
        assert_eq!(a.mode, Some(Mode::Production));
        assert_eq!(a.media_workers, Some(3));
        assert!(Cli::try_parse_from(["prism", "serve", "--listen", "nope"]).is_err());
        assert!(Cli::try_parse_from(["prism", "serve", "--mode", "prod"]).is_err());
        assert!(Cli::try_parse_from(["prism", "check-config", "--data-dir", "/x"]).is_ok());
    }

    #[test]
    fn dev_token_defaults_and_validation() {
        let cli = Cli::try_parse_from([
            "prism",
            "dev-token",
            "--user",
            "u1",
            "--channel",
            "ch_1",
            "--channel",
            "*",
            "--data-dir",
            "/tmp/d",
        ])
        .unwrap();
        let Some(Command::DevToken(a)) = cli.command else {
            panic!("not dev-token");
        };
        assert_eq!(a.user.as_str(), "u1");
        assert_eq!(a.channels, ["ch_1", "*"]);
        assert_eq!(
            a.perms,
            [
                DevPermission::Speak,
                DevPermission::Video,
                DevPermission::Screenshare
            ]
        );
        assert_eq!(a.ttl_s, 3600);
        assert_eq!(a.serve.data_dir, Some(PathBuf::from("/tmp/d")));

        let a = Cli::try_parse_from([
            "prism",
            "dev-token",
            "--user",
            "u1",
            "--channel",
            "c",
            "--perm",
            "speak",
            "--role",
            "moderator",
        ])
        .unwrap();
        let Some(Command::DevToken(a)) = a.command else {
            panic!("not dev-token");
        };
        assert_eq!(a.perms, [DevPermission::Speak]);
        assert_eq!(a.roles, ["moderator"]);

        for bad in [
            &["prism", "dev-token", "--user", "u1"][..],
            &["prism", "dev-token", "--channel", "c"],
            &["prism", "dev-token", "--user", "bad id", "--channel", "c"],
            &["prism", "dev-token", "--user", "u", "--channel", "c d"],
            &[
                "prism",
                "dev-token",
                "--user",
                "u",
                "--channel",
                "c",
                "--perm",
                "fly",
            ],
            &[
                "prism",
                "dev-token",
                "--user",
                "u",
                "--channel",
                "c",
                "--ttl-s",
                "0",
            ],
            &[
                "prism",
                "dev-token",
                "--user",
                "u",
                "--channel",
                "c",
                "--role",
                "a b",
            ],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
