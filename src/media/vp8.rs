//! VP8 picture id and TL0PICIDX continuity for one subscription.
//!
//! Simulcast layers are independent encoders, each numbering its pictures (RFC 7741
//! PictureID, 7 or 15 bits) and its base-layer pictures (TL0PICIDX) its own way. When a
//! subscription switches layer (always on a keyframe), the decoder must still see one
//! stream: the first picture of the new layer gets the id after the last one forwarded,
//! and later pictures keep that offset. The same holds after any gap the server makes
//! (pause, mute), since the rewriter rebases there too.
//!
//! The rewrite is a str0m [`Vp8Patch`] applied while str0m serialises the packet: no
//! payload copy and no allocation. It is identity (no patch) until the first switch.
//! VP9 and AV1 picture ids are not rewritten (VP9 is usually sent as SVC, one stream);
//! H264 carries no picture id in its payload, so it needs nothing beyond the continuous
//! sequence numbers and timestamps of `rewrite.rs`.
//!
//! Called per forwarded VP8 packet by the core's fan-out.

use str0m::rtp::{Vp8Descriptor, Vp8Patch};

/// Wraps `a - b` into the signed distance on a circle of `modulus`.
fn newer(a: u16, b: u16, modulus: u32) -> bool {
    let d = (u32::from(a) + modulus - u32::from(b)) % modulus;
    d != 0 && d < modulus / 2
}

/// Picture-id width of a payload: 15 bits when the M bit is set (RFC 7741 §4.2).
fn picture_id_modulus(payload: &[u8]) -> Option<u32> {
    let x = *payload.first()? & 0x80 != 0;
    let i = x && *payload.get(1)? & 0x80 != 0;
    if !i {
        return None;
    }
    Some(if *payload.get(2)? & 0x80 != 0 {
        1 << 15
    } else {
        1 << 7
    })
}

/// Per-subscription VP8 numbering state.
#[derive(Debug, Clone, Default)]
pub(crate) struct Vp8Continuity {
    pid_offset: u16,
    tl0_offset: u8,
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
    /// The next packet starts a new source: compute fresh offsets from it.
    rebase: bool,
}

impl Vp8Continuity {
    /// The source changes (layer switch or a deliberate gap): the next picture follows
    /// the last forwarded one.
    pub(crate) fn switch_source(&mut self) {
        self.rebase = true;
    }

    /// Maps one packet; returns the patch to apply, or `None` when the ids pass
    /// unchanged (or the payload carries none).
    pub(crate) fn map(&mut self, payload: &[u8], desc: &Vp8Descriptor) -> Option<Vp8Patch> {
        let pid_mod = picture_id_modulus(payload);
        let pid_in = desc.picture_id();
        let tl0_in = desc.tl0_pic_idx();
        if std::mem::take(&mut self.rebase) {
            if let (Some(m), Some(pid), Some(last)) = (pid_mod, pid_in, self.last_pid) {
                let next = (u32::from(last) + 1) % m;
                self.pid_offset = ((next + m - u32::from(pid) % m) % m) as u16;
            }
            if let (Some(tl0), Some(last)) = (tl0_in, self.last_tl0) {
                self.tl0_offset = last.wrapping_add(1).wrapping_sub(tl0);
            }
        }
        let pid_out = match (pid_mod, pid_in) {
            (Some(m), Some(pid)) => {
                let out = ((u32::from(pid) + u32::from(self.pid_offset)) % m) as u16;
                if self.last_pid.is_none_or(|l| newer(out, l, m)) {
                    self.last_pid = Some(out);
                }
                Some(out)
            }
            _ => None,
        };
        let tl0_out = tl0_in.map(|t| {
            let out = t.wrapping_add(self.tl0_offset);
            if self
                .last_tl0
                .is_none_or(|l| newer(out.into(), l.into(), 256))
            {
                self.last_tl0 = Some(out);
            }
            out
        });
        let mut builder = desc.patch();
        let mut any = false;
        if let Some(pid) = pid_out.filter(|_| self.pid_offset != 0) {
            builder = builder.picture_id(pid);
            any = true;
        }
        if let Some(tl0) = tl0_out.filter(|_| self.tl0_offset != 0) {
            builder = builder.tl0_pic_idx(tl0);
            any = true;
        }
        if !any {
            return None;
        }
        // Cannot fail: each field is present and its value fits the parsed width.
        builder.build().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// X, I, L, T bits; 15-bit picture id; TL0PICIDX; TID; then a VP8 header byte.
    fn payload(pid: u16, tl0: u8) -> Vec<u8> {
        vec![
            0x90,
            0xE0,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            tl0,
            0x00,
            0x00,
            1,
            2,
            3,
        ]
    }

    fn map(c: &mut Vp8Continuity, p: &[u8]) -> Option<Vp8Patch> {
        let desc = Vp8Descriptor::parse(p).expect("valid descriptor");
        c.map(p, &desc)
    }

    /// The patch that rewrites `p` to (`pid`, `tl0`).
    fn rewritten(p: &[u8], pid: u16, tl0: u8) -> Option<Vp8Patch> {
        let desc = Vp8Descriptor::parse(p).expect("valid descriptor");
        Some(
            desc.patch()
                .picture_id(pid)
                .tl0_pic_idx(tl0)
                .build()
                .expect("fits"),
        )
    }

    #[test]
    fn ids_pass_unchanged_until_a_switch_then_continue_from_the_last_forwarded() {
        let mut c = Vp8Continuity::default();
        assert_eq!(map(&mut c, &payload(100, 7)), None);
        assert_eq!(map(&mut c, &payload(101, 8)), None);
        c.switch_source();
        // The new layer numbers its pictures very differently.
        let p = payload(30_000, 200);
        assert_eq!(map(&mut c, &p), rewritten(&p, 102, 9));
        let p = payload(30_001, 201);
        assert_eq!(map(&mut c, &p), rewritten(&p, 103, 10));
        assert_eq!(map(&mut c, &p), rewritten(&p, 103, 10));
        c.switch_source();
        let p = payload(5, 0);
        assert_eq!(map(&mut c, &p), rewritten(&p, 104, 11));
    }

    #[test]
    fn picture_ids_wrap_at_fifteen_bits() {
        let mut c = Vp8Continuity::default();
        assert_eq!(map(&mut c, &payload(0x7fff, 255)), None);
        c.switch_source();
        let p = payload(40, 3);
        assert_eq!(map(&mut c, &p), rewritten(&p, 0, 0));
        let p = payload(41, 4);
        assert_eq!(map(&mut c, &p), rewritten(&p, 1, 1));
    }

    #[test]
    fn payloads_without_ids_get_no_patch() {
        let mut c = Vp8Continuity::default();
        let p = [0x10u8, 0x00, 1, 2, 3];
        c.switch_source();
        assert!(map(&mut c, &p).is_none());
    }
}
