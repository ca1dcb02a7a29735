//! Tokens: session tokens, join tickets, TURN credentials, admin key.
