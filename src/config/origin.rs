//! Strict parsing of the web addresses the configuration names: the server's
//! `public_url`, the entries of the Origin allow-list, browser `Origin` header values,
//! and the host part of STUN/TURN URLs.
//!
//! Invariant: a [`WebUrl`] is `http` or `https`, has a syntactically valid host (DNS
//! name, dotted-quad IPv4 or bracketed IPv6), no user-info, no query or fragment, and is
//! normalised (lowercase scheme and host, default port dropped, no trailing slash), so
//! two values naming the same origin compare equal as strings. Anything a browser would
//! not send as an `Origin` — `http://localhost:80@evil.com`, `https://localhost:x`,
//! `null` — fails to parse, which is what makes the allow-list check exact.
//!
//! Called by `config::build` at load time and by `Config::origin_allowed` per request.

use std::net::{Ipv4Addr, Ipv6Addr};

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A parsed, normalised `http(s)://host[:port][/path]` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WebUrl {
    pub scheme: Scheme,
    /// Lowercase DNS name or IPv4 text, or `[v6]` with brackets.
    pub host: String,
    /// `None` when the scheme's default port (browsers omit it from `Origin`).
    pub port: Option<u16>,
    /// Empty, or `/segment[/segment…]` without a trailing slash.
    pub path: String,
}

impl WebUrl {
    /// Parses a base URL: an origin optionally followed by a path prefix (a trailing
    /// slash is dropped). Query strings and fragments are refused.
    pub fn parse_base(s: &str) -> Result<Self, String> {
        let (scheme, rest) = split_scheme(s)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (host, port) = parse_authority(authority, scheme)?;
        let path = parse_path(path)?;
        Ok(Self {
            scheme,
            host,
            port,
            path,
        })
    }

    /// Parses an origin as browsers serialise it: `scheme://host[:port]`, nothing after.
    pub fn parse_origin(s: &str) -> Result<Self, String> {
        let (scheme, authority) = split_scheme(s)?;
        if authority.contains('/') {
            return Err("an origin has no path (not even a trailing slash)".into());
        }
        let (host, port) = parse_authority(authority, scheme)?;
        Ok(Self {
            scheme,
            host,
            port,
            path: String::new(),
        })
    }

    /// `scheme://host[:port]`, normalised.
    pub fn origin(&self) -> String {
        match self.port {
            Some(p) => format!("{}://{}:{p}", self.scheme.as_str(), self.host),
            None => format!("{}://{}", self.scheme.as_str(), self.host),
        }
    }

    /// The whole URL, normalised, without a trailing slash.
    pub fn full(&self) -> String {
        format!("{}{}", self.origin(), self.path)
    }
}

fn split_scheme(s: &str) -> Result<(Scheme, &str), String> {
    if s.bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b >= 0x80)
    {
        return Err("must be plain ASCII without spaces or control characters".into());
    }
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| "must start with http:// or https://".to_string())?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err("the scheme must be http or https".into()),
    };
    if rest.contains(['?', '#']) {
        return Err("must not contain a query (?) or fragment (#)".into());
    }
    Ok((scheme, rest))
}

/// `host[:port]` → (normalised host, port unless default). User-info is refused.
fn parse_authority(authority: &str, scheme: Scheme) -> Result<(String, Option<u16>), String> {
    if authority.contains('@') {
        return Err("must not contain user-info (@)".into());
    }
    let (host, port) = split_host_port(authority)?;
    let port = match port {
        None => None,
        Some(p) => {
            let p = parse_port(p)?;
            (p != scheme.default_port()).then_some(p)
        }
    };
    Ok((host, port))
}

/// Splits `host[:port]` and validates the host. The port text is returned unparsed.
pub(crate) fn split_host_port(authority: &str) -> Result<(String, Option<&str>), String> {
    if let Some(after_bracket) = authority.strip_prefix('[') {
        let (inner, tail) = after_bracket
            .split_once(']')
            .ok_or_else(|| "an IPv6 host needs a closing ]".to_string())?;
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| format!("[{inner}] is not an IPv6 address"))?;
        let port = match tail {
            "" => None,
            t => Some(
                t.strip_prefix(':')
                    .ok_or_else(|| "only :port may follow an IPv6 host".to_string())?,
            ),
        };
        return Ok((format!("[{ip}]"), port));
    }
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    Ok((parse_host(host)?, port))
}

pub(crate) fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {p:?} is not a number between 1 and 65535"));
    }
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("port {p:?} is not a number between 1 and 65535")),
    }
}

/// A DNS name (letters, digits, hyphens, dot-separated labels) or a dotted-quad IPv4.
fn parse_host(host: &str) -> Result<String, String> {
    let host = host.to_ascii_lowercase();
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    if host.len() > 253 {
        return Err("the host is longer than 253 characters".into());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // All digits and dots: only a real IPv4 address, never "1.2.3" or "999.1.1.1".
        host.parse::<Ipv4Addr>()
            .map_err(|_| format!("{host:?} is not an IPv4 address"))?;
        return Ok(host);
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("{host:?} is not a valid host name"));
        }
    }
    Ok(host)
}

fn parse_path(path: &str) -> Result<String, String> {
    let path = path.strip_suffix('/').unwrap_or(path);
    if path.is_empty() {
        return Ok(String::new());
    }
    for segment in path[1..].split('/') {
        let ok = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if !ok {
            return Err(format!(
                "path {path:?} may only hold segments of A-Z a-z 0-9 - . _ ~"
            ));
        }
    }
    Ok(path.to_string())
}

/// The dev-mode extra rule of protocol-v1 §1: `http://localhost[:port]` or
/// `http://127.0.0.1[:port]`, and nothing that merely starts like them.
pub(crate) fn is_dev_loopback_origin(origin: &WebUrl) -> bool {
    origin.scheme == Scheme::Http && (origin.host == "localhost" || origin.host == "127.0.0.1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalised() {
        let u = WebUrl::parse_base("HTTPS://Example.ORG:443/").unwrap();
        assert_eq!(u.full(), "https://example.org");
        let u = WebUrl::parse_base("http://example.org:8080/rtc/").unwrap();
        assert_eq!(u.full(), "http://example.org:8080/rtc");
        assert_eq!(u.origin(), "http://example.org:8080");
        let u = WebUrl::parse_base("http://[::1]:8080").unwrap();
        assert_eq!(u.origin(), "http://[::1]:8080");
    }

    #[test]
    fn bad_base_urls_are_refused() {
        for bad in [
            "",
            "example.org",
            "ftp://example.org",
            "https://",
            "https://user@example.org",
            "https://example.org?x=1",
            "https://example.org/#frag",
            "https://example.org:0",
            "https://example.org:65536",
            "https://example.org:",
            "https://exa mple.org",
            "https://-bad.org",
            "https://a..b",
            "https://999.1.1.1",
            "https://[::1",
            "https://[zz]",
            "https://example.org/a/../b",
            "https://example.org//",
            "https://exämple.org",
        ] {
            assert!(WebUrl::parse_base(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn origins_have_no_path() {
        assert!(WebUrl::parse_origin("https://example.org").is_ok());
        assert!(WebUrl::parse_origin("https://example.org/").is_err());
        assert!(WebUrl::parse_origin("https://example.org/x").is_err());
        assert!(WebUrl::parse_origin("null").is_err());
    }
}
