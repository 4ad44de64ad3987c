//! Gatekeeper's cryptographic core. Pure: no IO, no async, no clocks; randomness is passed in.
//!
//! * [`master`] — the per-epoch master secret (sr25519, 64-byte expanded form).
//! * [`shares`] — t-of-n verifiable sharing (Feldman VSS over Ristretto255) of a master secret.
//! * [`derive`] — worker, cluster, contract and cluster-signing keys (native and Phala schemes).
//! * [`envelope`] — HPKE (RFC 9180) envelopes bound to cluster, epoch, purpose and recipient.
//! * [`sign`] — sr25519 signatures over canonical messages, one context per message kind.
//! * [`sealed`] — the versioned sealed-blob format for secrets at rest.
//! * [`dev_attestation`] — the software enclave's stand-in for a DCAP quote (dev policy only).
//! * [`encoding`] — the canonical, domain-separated encoding all of the above use.
//!
//! Secret-holding types zeroize on drop and never print secrets under `Debug`. Every refusal is an
//! [`Error`] with a stable [`Error::code`]. The design and the byte-exact formats are in
//! `docs/design.md`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod derive;
pub mod dev_attestation;
pub mod encoding;
pub mod envelope;
mod error;
mod keys;
pub mod master;
pub mod sealed;
pub mod shares;
pub mod sign;

pub use error::{Error, Result};
pub use keys::{
    ct_eq, ClusterId, ContractId, GatekeeperId, Signature, Sr25519Keypair, Sr25519PublicKey,
    X25519PublicKey, X25519SecretKey,
};
pub use master::MasterSecret;
