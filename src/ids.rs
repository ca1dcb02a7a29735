//! Identifier newtypes, parsed once at the edge (HTTP paths, JSON payloads, token
//! claims) and trusted everywhere inside.
//!
//! Invariant: a value of any of these types is 1..=N bytes of `[A-Za-z0-9_.:-]`
//! (N per type, from protocol-v1 §2 and http-api), so it is safe in logs, URLs,
//! JSON and metric labels without escaping. Server-minted ids (`SessionId`,
//! `TrackId`) are built by [`SessionId::mint`] / [`TrackId::mint`] from random bytes.

use std::fmt;
use std::sync::Arc;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    /// Empty string.
    Empty,
    /// Longer than the type allows (the limit is carried).
    TooLong(usize),
    /// A byte outside `[A-Za-z0-9_.:-]`.
    BadChar,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Empty => write!(f, "must not be empty"),
            IdError::TooLong(n) => write!(f, "must be at most {n} characters"),
            IdError::BadChar => write!(f, "may only contain A-Z a-z 0-9 _ . : -"),
        }
    }
}

impl std::error::Error for IdError {}

/// Checks the shared id alphabet and length bound.
pub fn check_id(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong(max));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        return Err(IdError::BadChar);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Parses and validates an id received from outside.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_id(s, Self::MAX_LEN)?;
                Ok(Self(Arc::from(s)))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A channel (one call), `channel_id` on the wire: 1–128 chars.
    ChannelId,
    128
);
id_type!(
    /// A person, the `sub` of a session token: 1–128 chars.
    UserUid,
    128
);
id_type!(
    /// One device of a person: 1–64 chars.
    DeviceId,
    64
);
id_type!(
    /// A client's request id: 1–64 chars.
    RequestId,
    64
);
id_type!(
    /// A participant session, minted by the server (`s_` + 20 hex chars).
    SessionId,
    64
);
id_type!(
    /// A published track, minted by the server (`t_` + 20 hex chars).
    TrackId,
    64
);

fn mint(prefix: &str) -> Arc<str> {
    let mut bytes = [0u8; 10];
    crate::secret::fill_random(&mut bytes);
    let mut s = String::with_capacity(prefix.len() + 20);
    s.push_str(prefix);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Arc::from(s)
}

impl SessionId {
    /// A fresh random session id.
    pub fn mint() -> Self {
        Self(mint("s_"))
    }
}

impl TrackId {
    /// A fresh random track id.
    pub fn mint() -> Self {
        Self(mint("t_"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_id_alphabet_and_refuses_the_rest() {
        assert!(ChannelId::parse("ch_42.a:b-c").is_ok());
        assert_eq!(ChannelId::parse(""), Err(IdError::Empty));
        assert_eq!(ChannelId::parse("a b"), Err(IdError::BadChar));
        assert_eq!(ChannelId::parse("é"), Err(IdError::BadChar));
        assert!(DeviceId::parse(&"d".repeat(64)).is_ok());
        assert_eq!(DeviceId::parse(&"d".repeat(65)), Err(IdError::TooLong(64)));
    }

    #[test]
    fn minted_ids_are_valid_and_distinct() {
        let a = SessionId::mint();
        let b = SessionId::mint();
        assert_ne!(a, b);
        assert!(SessionId::parse(a.as_str()).is_ok());
        assert!(TrackId::mint().as_str().starts_with("t_"));
    }

    #[test]
    fn serde_round_trip_validates() {
        let c: ChannelId = serde_json::from_str("\"ch_1\"").unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"ch_1\"");
        assert!(serde_json::from_str::<ChannelId>("\"bad id\"").is_err());
    }
}
