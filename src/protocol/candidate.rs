//! Trickled ICE candidates (`rtc.ice.candidate`, both directions) and the check that
//! a client's candidate string looks like an RFC 8839 candidate line.
//!
//! Invariant: an [`IceCandidate`] produced by the parser has either `candidate: None`
//! (end-of-candidates) or a string of at most [`MAX_CANDIDATE_LEN`] printable ASCII
//! bytes with the eight mandatory fields well-formed. The server is ICE-lite and learns
//! addresses from STUN, so the session only acks these; the check exists so garbage is
//! answered `bad_request` instead of being held for a peer connection.

use serde::Serialize;

use super::objects::{Mid, PeerKind};

/// Longest accepted candidate string, in bytes.
pub const MAX_CANDIDATE_LEN: usize = 1024;

/// One trickled candidate, or end-of-candidates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct IceCandidate {
    /// Which peer connection it belongs to.
    pub pc: PeerKind,
    /// The candidate line (with or without the `candidate:` prefix, as sent);
    /// `None` means end-of-candidates (`null` or `""` on the wire).
    pub candidate: Option<String>,
    /// The m-line's mid, if given.
    pub sdp_mid: Option<Mid>,
    /// The m-line's index, if given.
    pub sdp_mline_index: Option<u16>,
}

impl IceCandidate {
    /// Whether the candidate's address is an mDNS name (`….local`), which the server
    /// cannot resolve and ignores.
    pub fn is_mdns(&self) -> bool {
        self.candidate
            .as_deref()
            .and_then(|c| fields(c).nth(4))
            .is_some_and(|addr| {
                addr.len() > ".local".len()
                    && addr.as_bytes()[addr.len() - ".local".len()..]
                        .eq_ignore_ascii_case(b".local")
            })
    }
}

/// The whitespace-separated fields of a candidate line, prefix stripped.
fn fields(line: &str) -> std::str::SplitAsciiWhitespace<'_> {
    line.strip_prefix("candidate:")
        .unwrap_or(line)
        .split_ascii_whitespace()
}

/// Checks a non-empty candidate string; the error names the bad part, without the
/// field path (the caller adds it).
pub(crate) fn check_candidate_line(line: &str) -> Result<(), String> {
    if line.len() > MAX_CANDIDATE_LEN {
        return Err(format!("must be at most {MAX_CANDIDATE_LEN} bytes"));
    }
    if !line.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err("must be printable ASCII on one line".into());
    }
    let mut f = fields(line);
    // RFC 8839 §5.1: foundation SP component-id SP transport SP priority SP
    // connection-address SP port SP "typ" SP cand-type *(SP extension-att).
    let mut next = |name: &str| {
        f.next().ok_or_else(|| {
            format!(
                "not a candidate line: missing {name} (expected \"candidate:<foundation> \
                 <component> <transport> <priority> <address> <port> typ <type> …\")"
            )
        })
    };
    let foundation = next("foundation")?;
    let component = next("component")?;
    let transport = next("transport")?;
    let priority = next("priority")?;
    let address = next("address")?;
    let port = next("port")?;
    let typ = next("\"typ\"")?;
    let cand_type = next("candidate type")?;

    if foundation.len() > 32
        || !foundation
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        return Err("foundation: must be 1-32 characters of A-Z a-z 0-9 + /".into());
    }
    if !matches!(parse_decimal(component, 3), Some(1..=256)) {
        return Err("component: must be an integer 1-256".into());
    }
    if !is_token(transport) {
        return Err("transport: must be a token such as udp or tcp".into());
    }
    if parse_decimal(priority, 10)
        .and_then(|p| u32::try_from(p).ok())
        .is_none()
    {
        return Err("priority: must be an integer 0-4294967295".into());
    }
    if address.len() > 255
        || !address
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'-' | b'_' | b'%'))
    {
        return Err("address: must be an IP address or host name".into());
    }
    if parse_decimal(port, 5)
        .and_then(|p| u16::try_from(p).ok())
        .is_none()
    {
        return Err("port: must be an integer 0-65535".into());
    }
    if typ != "typ" {
        return Err("expected \"typ\" after the port".into());
    }
    if !is_token(cand_type) {
        return Err("candidate type: must be a token such as host, srflx, prflx or relay".into());
    }
    // Extension attributes (raddr, rport, tcptype, generation, ufrag, network-id,
    // network-cost, …) are allowed and ignored: the server never uses client
    // candidates for anything but acknowledging them.
    Ok(())
}

/// 1–`max_digits` ASCII digits as a number.
fn parse_decimal(s: &str, max_digits: usize) -> Option<u64> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// 1–32 characters of `[A-Za-z0-9-]`.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = "candidate:842163049 1 udp 1677729535 203.0.113.7 54321 typ srflx \
                          raddr 192.168.1.10 rport 54321 generation 0 ufrag EsAw \
                          network-id 1 network-cost 10";

    #[test]
    fn accepts_browser_candidates_with_extensions() {
        assert_eq!(check_candidate_line(CHROME), Ok(()));
        assert_eq!(
            check_candidate_line("candidate:0 1 UDP 2122252543 192.168.1.10 49203 typ host"),
            Ok(())
        );
        // Firefox-style IPv6, TCP with tcptype.
        assert_eq!(
            check_candidate_line(
                "candidate:1 1 TCP 2105524479 2001:db8::1 9 typ host tcptype active"
            ),
            Ok(())
        );
        // No `candidate:` prefix.
        assert_eq!(
            check_candidate_line("1 1 udp 2122260223 10.0.0.2 5000 typ host"),
            Ok(())
        );
    }

    #[test]
    fn refuses_what_is_not_a_candidate_line() {
        let cases = [
            ("hello", "missing component"),
            (
                "candidate:1 1 udp 1 10.0.0.1 5000 host",
                "missing candidate type",
            ),
            (
                "candidate:1 1 udp 1 10.0.0.1 5000 type host",
                "expected \"typ\"",
            ),
            ("candidate:1 0 udp 1 10.0.0.1 5000 typ host", "component"),
            (
                "candidate:1 1 udp 99999999999 10.0.0.1 5000 typ host",
                "priority",
            ),
            ("candidate:1 1 udp 1 10.0.0.1 70000 typ host", "port"),
            ("candidate:1 1 udp 1 10.0.0.1 -1 typ host", "port"),
            ("candidate:1 1 udp 1 10.0.0.1/8 5000 typ host", "address"),
            ("candidate:a_b 1 udp 1 10.0.0.1 5000 typ host", "foundation"),
            ("candidate:1 1 u.dp 1 10.0.0.1 5000 typ host", "transport"),
            (
                "candidate:1 1 udp 1 10.0.0.1 5000 typ host\n",
                "printable ASCII",
            ),
            (
                "candidate:1 1 udp 1 10.0.0.1 5000 typ hóst",
                "printable ASCII",
            ),
        ];
        for (line, expect) in cases {
            let err = check_candidate_line(line).unwrap_err();
            assert!(err.contains(expect), "{line:?}: {err}");
        }
        let long = format!("{CHROME} {}", "x".repeat(MAX_CANDIDATE_LEN));
        assert!(
            check_candidate_line(&long)
                .unwrap_err()
                .contains("at most 1024")
        );
    }

    #[test]
    fn detects_mdns_addresses() {
        let mk = |c: Option<&str>| IceCandidate {
            pc: PeerKind::Publish,
            candidate: c.map(String::from),
            sdp_mid: None,
            sdp_mline_index: None,
        };
        assert!(
            mk(Some(
                "candidate:1 1 udp 2113937151 3f7c1a2e-1b2c-4d5e-8f90-123456789abc.local \
                 51000 typ host generation 0"
            ))
            .is_mdns()
        );
        assert!(mk(Some("1 1 udp 1 host.LOCAL 5000 typ host")).is_mdns());
        assert!(!mk(Some(CHROME)).is_mdns());
        assert!(!mk(Some("candidate:1 1 udp 1 .local 5000 typ host")).is_mdns());
        assert!(!mk(None).is_mdns());
    }

    #[test]
    fn serializes_like_the_clients_message() {
        let c = IceCandidate {
            pc: PeerKind::Subscribe,
            candidate: None,
            sdp_mid: None,
            sdp_mline_index: Some(0),
        };
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"pc": "subscribe", "candidate": null, "sdp_mid": null,
                               "sdp_mline_index": 0})
        );
    }
}
