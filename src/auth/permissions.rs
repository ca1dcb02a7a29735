//! What a participant may do in a channel: [`Permission`] and the bit set
//! [`Permissions`].
//!
//! Invariant: the wire names are fixed (`connect`, `speak`, `video`, `screenshare`);
//! unknown names are ignored when parsing so an identity service can grant
//! permissions a newer server understands without breaking older ones. `connect`
//! is membership, never sent to clients: [`Permissions::names`] omits it.
//!
//! Used by session tokens, join tickets, and the join path that decides what a
//! session may publish.

use std::fmt;

/// One permission in a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Membership: may join the channel (and list its participants).
    Connect,
    /// May publish a microphone track.
    Speak,
    /// May publish a camera track.
    Video,
    /// May publish a screen share.
    Screenshare,
}

impl Permission {
    /// Every permission, in wire order.
    const ALL: [Permission; 4] = [
        Permission::Connect,
        Permission::Speak,
        Permission::Video,
        Permission::Screenshare,
    ];

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Connect => "connect",
            Permission::Speak => "speak",
            Permission::Video => "video",
            Permission::Screenshare => "screenshare",
        }
    }

    /// Parses a wire name; `None` for a name this server does not know.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    fn bit(self) -> u8 {
        match self {
            Permission::Connect => 1,
            Permission::Speak => 2,
            Permission::Video => 4,
            Permission::Screenshare => 8,
        }
    }
}

/// A set of [`Permission`]s. `Default` is the empty set.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Permissions(u8);

impl Permissions {
    /// Whether `p` is in the set.
    pub fn contains(&self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    /// Adds `p` to the set.
    pub fn insert(&mut self, p: Permission) {
        self.0 |= p.bit();
    }

    /// The set with `p` added (for building sets in one expression).
    pub fn with(mut self, p: Permission) -> Self {
        self.insert(p);
        self
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// Parses wire names; unknown names are ignored (forward compatible).
    pub fn from_names(names: &[&str]) -> Self {
        names
            .iter()
            .filter_map(|n| Permission::from_name(n))
            .fold(Self::default(), Self::with)
    }

    /// The media permissions for the wire, in the stable order
    /// `speak`, `video`, `screenshare`. `connect` is never listed.
    pub fn names(&self) -> Vec<&'static str> {
        Permission::ALL
            .into_iter()
            .filter(|p| *p != Permission::Connect && self.contains(*p))
            .map(Permission::name)
            .collect()
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Lists `connect` too, unlike the wire form, because a log reader needs it.
        f.debug_set()
            .entries(
                Permission::ALL
                    .into_iter()
                    .filter(|p| self.contains(*p))
                    .map(Permission::name),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_empty_and_insert_adds() {
        let mut p = Permissions::default();
        assert!(p.is_empty());
        assert!(!p.contains(Permission::Speak));
        p.insert(Permission::Speak);
        assert!(p.contains(Permission::Speak));
        assert!(!p.contains(Permission::Video));
        assert!(!p.is_empty());
    }

    #[test]
    fn from_names_ignores_unknown_names() {
        let p = Permissions::from_names(&["video", "teleport", "connect", ""]);
        assert!(p.contains(Permission::Video));
        assert!(p.contains(Permission::Connect));
        assert!(!p.contains(Permission::Speak));
        assert_eq!(p, Permissions::from_names(&["connect", "video"]));
    }

    #[test]
    fn names_are_in_stable_order_without_connect() {
        let p = Permissions::from_names(&["screenshare", "connect", "speak", "video"]);
        assert_eq!(p.names(), vec!["speak", "video", "screenshare"]);
        assert!(
            Permissions::from_names(&["connect"]).names().is_empty(),
            "connect is never listed on the wire"
        );
    }

    #[test]
    fn debug_lists_every_name() {
        let p = Permissions::default()
            .with(Permission::Connect)
            .with(Permission::Speak);
        assert_eq!(format!("{p:?}"), r#"{"connect", "speak"}"#);
    }
}
