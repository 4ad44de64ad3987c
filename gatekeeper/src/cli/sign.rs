//! Signing operator commands with the operator's TLS client key (ECDSA P-256), as
//! `gatekeeper admin rotate|retire|dev` do: the command travels in
//! `OperatorAuthorization.command_json`, signed over
//! [`gatekeeper_raft::state::operator_signing_bytes`] (design.md §10.2.1).

use anyhow::{bail, Context, Result};
use gatekeeper_proto::v1 as pb;
use gatekeeper_raft::state::{operator_signing_bytes, Bytes32, Command};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls_pki_types::PrivateKeyDer;
use std::path::Path;

/// An operator's signing key and registered name (its certificate's common name).
pub struct OperatorSigner {
    name: String,
    key: EcdsaKeyPair,
}

impl std::fmt::Debug for OperatorSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OperatorSigner({}, key redacted)", self.name)
    }
}

impl OperatorSigner {
    /// Reads the operator's certificate (for its name) and PKCS#8 private key.
    pub fn from_files(cert: &Path, key: &Path) -> Result<OperatorSigner> {
        let id = crate::tls::pem::Identity::load(cert, key, std::time::SystemTime::now())
            .with_context(|| format!("operator certificate {}", cert.display()))?;
        let name = id
            .leaf()
            .common_name
            .clone()
            .with_context(|| format!("{} has no common name", cert.display()))?;
        let PrivateKeyDer::Pkcs8(der) = id.key().der() else {
            bail!(
                "{}: the operator key must be PKCS#8 (\"BEGIN PRIVATE KEY\", as `gatekeeper certs \
                 operator` writes it) to sign operator commands",
                key.display()
            );
        };
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: not an ECDSA P-256 key ({e}); operator commands are signed with P-256 \
                     (`gatekeeper certs operator` makes one)",
                key.display()
            )
        })?;
        Ok(OperatorSigner { name, key })
    }

    /// The operator's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs `command` for the cluster `gatekeeper_id` with sequence `seq`.
    pub fn authorize(
        &self,
        gatekeeper_id: &Bytes32,
        seq: u64,
        command: &Command,
    ) -> pb::OperatorAuthorization {
        let json = serde_json::to_string(command).expect("commands always serialize");
        let msg = operator_signing_bytes(Some(gatekeeper_id), &self.name, seq, json.as_bytes());
        let rng = ring::rand::SystemRandom::new();
        let sig = self
            .key
            .sign(&rng, &msg)
            .expect("ECDSA signing with the system RNG does not fail");
        pb::OperatorAuthorization {
            command_json: json,
            sequence: seq,
            signature: sig.as_ref().to_vec(),
        }
    }
}

/// A sequence for an operator command: the clock in microseconds (increasing across calls and
/// restarts; two commands by one operator in the same microsecond: the second is refused as a
/// replay and can be run again).
pub fn operator_sequence() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
