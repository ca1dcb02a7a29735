//! Conversions between the wire protocol's media vocabulary and the media core's.
//! Both sides are closed enums, so every mapping is total.

use crate::auth::{Permission, Permissions};
use crate::media::{CodecName, Layer as MediaLayer, MediaKind, RejectReason, TrackSource};
use crate::protocol::{Codec, ErrorCode, Kind, Layer, Source};

/// Wire source → media source.
pub fn source_to_media(s: Source) -> TrackSource {
    match s {
        Source::Microphone => TrackSource::Microphone,
        Source::Camera => TrackSource::Camera,
        Source::Screen => TrackSource::Screen,
        Source::ScreenAudio => TrackSource::ScreenAudio,
    }
}

/// Media source → wire source.
pub fn source_to_wire(s: TrackSource) -> Source {
    match s {
        TrackSource::Microphone => Source::Microphone,
        TrackSource::Camera => Source::Camera,
        TrackSource::Screen => Source::Screen,
        TrackSource::ScreenAudio => Source::ScreenAudio,
    }
}

/// The permission publishing `s` needs (protocol-v1 §4).
pub fn permission_for(s: Source) -> Permission {
    match s {
        Source::Microphone | Source::ScreenAudio => Permission::Speak,
        Source::Camera => Permission::Video,
        Source::Screen => Permission::Screenshare,
    }
}

/// Whether `perms` allow publishing `s`.
pub fn may_publish(perms: Permissions, s: Source) -> bool {
    perms.contains(permission_for(s))
}

/// Media kind → wire kind.
pub fn kind_to_wire(k: MediaKind) -> Kind {
    match k {
        MediaKind::Audio => Kind::Audio,
        MediaKind::Video => Kind::Video,
    }
}

/// Media codec → wire codec.
pub fn codec_to_wire(c: CodecName) -> Codec {
    match c {
        CodecName::Opus => Codec::Opus,
        CodecName::Vp8 => Codec::Vp8,
        CodecName::Vp9 => Codec::Vp9,
        CodecName::H264 => Codec::H264,
        CodecName::Av1 => Codec::Av1,
    }
}

/// Wire layer → media layer.
pub fn layer_to_media(l: Layer) -> MediaLayer {
    match l {
        Layer::Q => MediaLayer::Q,
        Layer::H => MediaLayer::H,
        Layer::F => MediaLayer::F,
    }
}

/// Media layer → wire layer.
pub fn layer_to_wire(l: MediaLayer) -> Layer {
    match l {
        MediaLayer::Q => Layer::Q,
        MediaLayer::H => Layer::H,
        MediaLayer::F => Layer::F,
    }
}

/// A subscribe rejection's wire code.
pub fn reject_code(r: RejectReason) -> ErrorCode {
    match r {
        RejectReason::UnknownTrack => ErrorCode::UnknownTrack,
        RejectReason::CodecUnsupported => ErrorCode::CodecUnsupported,
    }
}
