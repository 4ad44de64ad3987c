//! Thin tonic adapters: each decodes its request, calls a core ([`crate::issuance`],
//! [`crate::peer`], the replica), and answers every refusal through [`crate::error::ApiError`]
//! (so every non-OK status carries `gatekeeper-error-code`). No decision is made here.

pub mod admin;
pub mod cluster;
pub mod key;
pub mod layer;
pub mod peer;
pub mod source_limit;

/// Largest accepted KeyService request (evidence included).
pub const MAX_KEY_REQUEST_BYTES: usize = 64 << 10;

/// Largest message the transport decodes for PeerService and AdminService.
pub const MAX_PEER_ADMIN_MESSAGE_BYTES: usize = 64 << 10;
