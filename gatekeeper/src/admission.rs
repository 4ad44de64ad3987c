//! Who may use the cluster listener (RaftService, PeerService): a pure decision over the verified
//! client certificate, this node's view of the membership, and the node id the message claims
//! to come from (docs/design.md §10.6).
//!
//! The TLS handshake has already checked that the certificate chains to the cluster CA and is
//! current. On top of that, [`admit`] decides which member the caller is:
//!
//! 1. **The certificate names the node**: its subject CN is `node-<id>` (every node certificate
//!    is named so); anything else is refused.
//! 2. **Membership and host**: `id` must be in this node's membership (voters and learners), and
//!    one of the certificate's subjectAltNames (DNS or IP) must equal the host of that node's
//!    Raft address there.
//! 3. **Pinned key**, for fetching shares: once node `id` registered the SPKI of its certificate
//!    in its member record, FetchShare needs exactly that key (the one its enclave's evidence
//!    covers). Raft calls are admitted by name and host alone, so a node whose certificate was
//!    just renewed keeps replicating, voting and leading until its new key is registered.
//! 4. **Uninitialised node**: a node with no membership at all (before `init`, or a node about
//!    to be joined) admits any certificate named `node-<id>`: its only caller is the leader that
//!    is bringing it in. (This trusts the cluster CA not to have issued node certificates to
//!    anyone else; see the threat model.)
//!
//! Then, if the message claims a sender (a vote's node id, a share request's requester), it must
//! be the admitted node. A member record pinning someone else's key changes nothing: identity
//! comes from the certificate's name, the pin only restricts that named node.

use gatekeeper_raft::{Node, NodeId};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// What the cluster listener is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterCall {
    /// RaftService.AppendEntries (claims the leader's id).
    AppendEntries,
    /// RaftService.Vote (claims the candidate's id).
    Vote,
    /// RaftService.InstallSnapshot (claims the leader's id).
    InstallSnapshot,
    /// RaftService.ClientWrite (a forwarded write).
    ClientWrite,
    /// RaftService.ReadIndex (a forwarded read barrier).
    ReadIndex,
    /// PeerService.FetchShare (claims the requester's id).
    FetchShare,
}

impl ClusterCall {
    /// From a RaftService method name.
    pub fn from_raft_method(method: &str) -> Option<ClusterCall> {
        Some(match method {
            "AppendEntries" => ClusterCall::AppendEntries,
            "Vote" => ClusterCall::Vote,
            "InstallSnapshot" => ClusterCall::InstallSnapshot,
            "ClientWrite" => ClusterCall::ClientWrite,
            "ReadIndex" => ClusterCall::ReadIndex,
            _ => return None,
        })
    }

    /// Whether the call needs the key the node's member record pins.
    fn needs_pinned_key(self) -> bool {
        matches!(self, ClusterCall::FetchShare)
    }
}

/// The caller's verified certificate, as far as admission needs it.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// SHA-256 of the leaf's SubjectPublicKeyInfo.
    pub spki_sha256: &'a [u8; 32],
    /// The leaf's subject common name.
    pub common_name: Option<&'a str>,
    /// The leaf's DNS subjectAltNames.
    pub dns_names: &'a [String],
    /// The leaf's IP subjectAltNames.
    pub ip_addresses: &'a [IpAddr],
}

impl<'a> From<&'a crate::tls::PeerIdentity> for Caller<'a> {
    fn from(p: &'a crate::tls::PeerIdentity) -> Self {
        Caller {
            spki_sha256: &p.spki_sha256,
            common_name: p.common_name.as_deref(),
            dns_names: &p.dns_names,
            ip_addresses: &p.ip_addresses,
        }
    }
}

/// This node's view of who is in the cluster.
#[derive(Clone, Copy, Debug)]
pub struct ClusterView<'a> {
    /// Voters and learners of the effective membership, with their addresses. Empty on a node
    /// that was never initialised or joined.
    pub nodes: &'a BTreeMap<NodeId, Node>,
    /// The TLS key (SPKI SHA-256) each member record pins.
    pub pinned: &'a BTreeMap<NodeId, [u8; 32]>,
}

/// Why a caller was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The certificate's CN is not `node-<id>`.
    UnknownCertificate {
        /// The CN, if any.
        common_name: Option<String>,
    },
    /// The certificate is named `node-<id>` but that node is not in the membership.
    NotInMembership {
        /// The node the certificate names.
        id: NodeId,
    },
    /// The certificate is named `node-<id>` but none of its subjectAltNames is the host of the
    /// node's Raft address.
    HostMismatch {
        /// The node the certificate names.
        id: NodeId,
        /// The host its Raft address has.
        host: String,
    },
    /// Node `id`'s record pins another key, and this call (FetchShare) needs the pinned one.
    StalePin {
        /// The node.
        id: NodeId,
    },
    /// The message claims to come from another node than the certificate's.
    WrongIdentity {
        /// The node the certificate belongs to.
        caller: NodeId,
        /// The node the message claims.
        claimed: NodeId,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownCertificate { common_name } => write!(
                f,
                "the client certificate (CN {}) is not a node's: node certificates are named \
                 node-<id>",
                common_name.as_deref().unwrap_or("none")
            ),
            Refusal::NotInMembership { id } => write!(
                f,
                "the client certificate names node {id}, which is not in the membership"
            ),
            Refusal::HostMismatch { id, host } => write!(
                f,
                "the client certificate names node {id} but is not valid for its Raft host {host}"
            ),
            Refusal::StalePin { id } => write!(
                f,
                "node {id}'s member record pins another TLS key; shares go only to the pinned \
                 key (the node re-registers a renewed certificate on its own)"
            ),
            Refusal::WrongIdentity { caller, claimed } => write!(
                f,
                "the client certificate belongs to node {caller} but the message claims node \
                 {claimed}"
            ),
        }
    }
}

/// The node id a certificate named `node-<id>` claims.
pub fn node_id_of_name(common_name: &str) -> Option<NodeId> {
    let digits = common_name.strip_prefix("node-")?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether one of the certificate's subjectAltNames is `host` (an IP address compares as an
/// address, a DNS name case-insensitively).
fn valid_for_host(caller: &Caller<'_>, host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(ip) => caller.ip_addresses.contains(&ip),
        Err(_) => caller
            .dns_names
            .iter()
            .any(|d| d.eq_ignore_ascii_case(host)),
    }
}

/// Decides which member the caller is, and whether it may make `call` claiming `claimed` (see
/// the module docs for the rules). Returns the caller's node id.
pub fn admit(
    view: ClusterView<'_>,
    caller: Caller<'_>,
    call: ClusterCall,
    claimed: Option<NodeId>,
) -> Result<NodeId, Refusal> {
    let id = caller
        .common_name
        .and_then(node_id_of_name)
        .ok_or_else(|| Refusal::UnknownCertificate {
            common_name: caller.common_name.map(str::to_string),
        })?;
    if !view.nodes.is_empty() {
        let node = view.nodes.get(&id).ok_or(Refusal::NotInMembership { id })?;
        let host = gatekeeper_raft::network::host_of(&node.raft_address);
        if !valid_for_host(&caller, host) {
            return Err(Refusal::HostMismatch {
                id,
                host: host.to_string(),
            });
        }
        if call.needs_pinned_key() {
            if let Some(pin) = view.pinned.get(&id) {
                if !keyring::ct_eq(pin, caller.spki_sha256) {
                    return Err(Refusal::StalePin { id });
                }
            }
        }
    }
    match claimed {
        Some(c) if c != id => Err(Refusal::WrongIdentity {
            caller: id,
            claimed: c,
        }),
        _ => Ok(id),
    }
}

#[cfg(test)]
mod tests;
