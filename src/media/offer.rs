//! What a client's SDP offer asks for, read once before str0m accepts it.
//!
//! The core decides per m-line (publish: which m-lines send and so become tracks;
//! subscribe: which m-lines to serve or reject) before `accept_offer` mutates the `Rtc`,
//! so a refused offer leaves the peer connection untouched. The facts come from str0m's
//! own parse of the offer (the same view `accept_offer` uses), checked for consistency
//! first so nothing here can panic on a malformed m-line.
//!
//! Also owns the one textual edit the core makes to an offer: turning rejected subscribe
//! m-lines `inactive`, so str0m answers them inactive.
//!
//! Called by `MediaCore::publish_offer` / `subscribe_offer` (signaling path, not per packet).

use str0m::change::SdpOffer;
use str0m::format::PayloadParams;
use str0m::media::{Direction, MediaKind, Mid};

/// One m-line of an offer.
#[derive(Debug, Clone)]
pub(crate) struct OfferLine {
    pub(crate) mid: Mid,
    /// `None` for the data channel (application) m-line and unknown media types.
    pub(crate) kind: Option<MediaKind>,
    /// Port 0: the m-line is stopped.
    pub(crate) stopped: bool,
    pub(crate) direction: Direction,
    /// The payload types the client offers on this m-line, in preference order.
    pub(crate) params: Vec<PayloadParams>,
    /// Simulcast rids, lowest layer first as offered.
    pub(crate) rids: Vec<String>,
}

impl OfferLine {
    /// The client sends media on this m-line (publish side).
    pub(crate) fn client_sends(&self) -> bool {
        !self.stopped && self.kind.is_some() && self.direction.is_sending()
    }

    /// The client wants to receive media on this m-line (subscribe side).
    pub(crate) fn client_receives(&self) -> bool {
        !self.stopped && self.kind.is_some() && self.direction.is_receiving()
    }
}

/// A one-line reason from str0m's SDP parse error, without the parser internals it
/// quotes (`PointerOffset(0x…)` is an address inside the server process).
fn parse_reason(text: &str) -> String {
    let detail: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("0x") && !l.contains("PointerOffset"))
        .collect();
    let mut reason = format!("the SDP could not be parsed: {}", detail.join("; "));
    if reason.len() > 200 {
        let mut cut = 200;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

/// Parses an offer and lists its m-lines. Errors are human-readable reasons.
pub(crate) fn analyze(sdp: &str) -> Result<(SdpOffer, Vec<OfferLine>), String> {
    let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| parse_reason(&e.to_string()))?;
    let mut lines = Vec::with_capacity(offer.media_lines.len());
    for (index, ml) in offer.media_lines.iter().enumerate() {
        // `mid()` panics without exactly one a=mid; check_consistent rules that out.
        if let Some(problem) = ml.check_consistent() {
            return Err(format!("m-line {index}: {problem}"));
        }
        let mid = ml.mid();
        if lines.iter().any(|l: &OfferLine| l.mid == mid) {
            return Err(format!("duplicate a=mid:{mid}"));
        }
        let kind = match ml.typ.to_string().as_str() {
            "audio" => Some(MediaKind::Audio),
            "video" => Some(MediaKind::Video),
            _ => None,
        };
        lines.push(OfferLine {
            mid,
            kind,
            stopped: ml.disabled,
            direction: ml.direction(),
            params: if kind.is_some() {
                ml.rtp_params()
            } else {
                Vec::new()
            },
            rids: ml.rids().iter().map(|r| r.to_string()).collect(),
        });
    }
    if lines.is_empty() {
        return Err("offer has no m-lines".into());
    }
    Ok((offer, lines))
}

/// Rewrites the direction attribute of the m-lines whose mid is in `mids` to
/// `a=inactive`. The rest of the text is kept byte for byte (line endings included).
pub(crate) fn make_inactive(sdp: &str, mids: &[Mid]) -> String {
    // Pass 1: which m-section (by index) is to be edited. The session section is -1.
    let mut section: isize = -1;
    let mut edit = Vec::new();
    for line in sdp.lines() {
        if line.starts_with("m=") {
            section += 1;
        } else if let Some(value) = line.strip_prefix("a=mid:")
            && mids.contains(&Mid::from(value.trim()))
        {
            edit.push(section);
        }
    }
    let mut out = String::with_capacity(sdp.len());
    let mut section: isize = -1;
    for line in sdp.split_inclusive('\n') {
        if line.starts_with("m=") {
            section += 1;
        }
        let bare = line.trim_end_matches(['\r', '\n']);
        if edit.contains(&section)
            && matches!(
                bare,
                "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive"
            )
        {
            out.push_str("a=inactive");
            out.push_str(&line[bare.len()..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=setup:actpass\r\na=rtcp-mux\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=setup:actpass\r\na=rtcp-mux\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\n";

    #[test]
    fn lists_m_lines_with_direction_kind_and_stopped_state() {
        let (_, lines) = analyze(OFFER).expect("valid offer");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].kind, Some(MediaKind::Audio));
        assert!(lines[0].client_receives() && !lines[0].client_sends());
        assert_eq!(lines[0].params.len(), 1);
        assert!(lines[1].stopped && !lines[1].client_receives());
    }

    #[test]
    fn garbage_and_missing_mid_are_reasons_not_panics() {
        let err = analyze("hello").expect_err("garbage");
        assert!(!err.contains("0x") && !err.contains('\n'), "{err}");
        assert!(analyze("").is_err());
        let no_mid = OFFER.replace("a=mid:0\r\n", "");
        let err = analyze(&no_mid).expect_err("missing mid");
        assert!(err.contains("mid"), "{err}");
    }

    #[test]
    fn make_inactive_edits_only_the_named_sections() {
        let edited = make_inactive(OFFER, &[Mid::from("0")]);
        let (_, lines) = analyze(&edited).expect("still valid");
        assert_eq!(lines[0].direction, Direction::Inactive);
        assert_eq!(lines[1].direction, Direction::RecvOnly);
        assert_eq!(
            edited.len(),
            OFFER.len() - "recvonly".len() + "inactive".len()
        );
    }
}
