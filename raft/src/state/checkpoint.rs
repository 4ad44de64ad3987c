//! Certified checkpoints: the proof that a snapshot holds the state a quorum of members reached.
//!
//! A snapshot replaces a follower's whole state, so it must prove its origin as a command does.
//! Every node, on applying an index that is a multiple of its checkpoint interval, encodes its
//! state (the snapshot body) and signs `(cluster, index, SHA-256 of the body)` with its enclave
//! identity key ([`checkpoint_signing_bytes`]). The signature travels through Raft in a
//! [`Command::SignCheckpoint`](super::Command::SignCheckpoint) proposal; once the signatures of
//! a majority of the voters agree on one digest, the state records a [`CheckpointCertificate`].
//! Snapshots are built only at certified checkpoints and carry their certificate; a node installs
//! a received snapshot only if [`verify_certificate`] accepts it against the member keys and
//! voters **it already knows** ([`Anchor`]). One member, however compromised, can sign only its
//! own digest, which never makes a majority.
//!
//! The only exception is a node with no state at all (a fresh joiner): it has nothing to verify
//! against and trusts the snapshot's own members ([`Anchor::from_state`]; design.md §11).

use super::commands::{reject, RejectCode, Reply};
use super::records::{Bytes32, HexBytes};
use super::GatekeeperState;
use crate::NodeId;
use keyring::sign::SigningPurpose;
use keyring::{Signature, Sr25519PublicKey};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Domain tag of checkpoint signatures (distinct from proposals' `gatekeeper/command/v2`).
pub const CHECKPOINT_TAG: &[u8] = b"gatekeeper/checkpoint/v1\0";

/// The exact bytes a checkpoint signature covers: the tag, the cluster id, the log index (big
/// endian) and the SHA-256 of the snapshot body at that index. Signed with the node's identity
/// key in the `gatekeeper/v1/command` signing context.
pub fn checkpoint_signing_bytes(gatekeeper_id: &Bytes32, index: u64, digest: &Bytes32) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_TAG.len() + 72);
    m.extend_from_slice(CHECKPOINT_TAG);
    m.extend_from_slice(&gatekeeper_id.0);
    m.extend_from_slice(&index.to_be_bytes());
    m.extend_from_slice(&digest.0);
    m
}

/// One node's signature of its state at a checkpoint (its latest; a newer one replaces it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointVote {
    /// The checkpoint's log index.
    pub index: u64,
    /// SHA-256 of this node's snapshot body at that index.
    pub digest: Bytes32,
    /// Signature over [`checkpoint_signing_bytes`].
    pub signature: HexBytes,
}

/// A checkpoint a majority of the voters signed: the state at `index` has body digest `digest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCertificate {
    /// The log index.
    pub index: u64,
    /// SHA-256 of the snapshot body.
    pub digest: Bytes32,
    /// Signatures by node (a majority of the voters when certified; later signers are added).
    pub signatures: BTreeMap<NodeId, HexBytes>,
    /// The voters in force when it was certified: the next checkpoint needs a majority of them
    /// too, and a received snapshot is verified against them ([`GatekeeperState::certified_voters`]).
    #[serde(default)]
    pub voters: BTreeSet<NodeId>,
}

/// What a node verifies a certificate against: the cluster id, the voters whose signatures count
/// and their identity keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Anchor {
    /// The cluster the signatures must be for.
    pub gatekeeper_id: Option<Bytes32>,
    /// Voters; more than half of them must have signed.
    pub voters: BTreeSet<NodeId>,
    /// Identity keys of the members.
    pub keys: BTreeMap<NodeId, Bytes32>,
}

impl Anchor {
    /// The anchor a node's own state gives: its cluster, its membership's voters, its members'
    /// keys.
    pub fn from_state(state: &GatekeeperState, voters: BTreeSet<NodeId>) -> Self {
        Self {
            gatekeeper_id: state.gatekeeper_id,
            voters,
            keys: state
                .members
                .iter()
                .map(|(n, m)| (*n, m.identity_public_key))
                .collect(),
        }
    }

    /// Whether this anchor can verify anything (an initialised state with registered members).
    pub fn is_empty(&self) -> bool {
        self.gatekeeper_id.is_none() || self.keys.is_empty()
    }
}

fn verify_signature(key: &Bytes32, message: &[u8], signature: &[u8]) -> bool {
    let Ok(pk) = Sr25519PublicKey::from_slice(&key.0) else {
        return false;
    };
    let Ok(sig) = <[u8; 64]>::try_from(signature) else {
        return false;
    };
    keyring::sign::verify(&pk, SigningPurpose::Command, message, &Signature(sig)).is_ok()
}

/// Checks that `cert` certifies the state at `index` with body digest `digest`: signatures by
/// more than half of `anchor`'s voters, each verified with the key `anchor` holds for it.
/// Signatures of non-voters or unknown nodes are ignored, a bad signature is refused. Returns the
/// number of valid voter signatures.
pub fn verify_certificate(
    cert: &CheckpointCertificate,
    index: u64,
    digest: &Bytes32,
    anchor: &Anchor,
) -> Result<usize, String> {
    let Some(gid) = &anchor.gatekeeper_id else {
        return Err("this node knows no cluster id to verify the certificate against".into());
    };
    if cert.index != index {
        return Err(format!(
            "the certificate is for index {} but the snapshot is at index {index}",
            cert.index
        ));
    }
    if cert.digest != *digest {
        return Err("the certificate is for another state (its digest differs)".into());
    }
    if anchor.voters.is_empty() {
        return Err("this node knows no voters to verify the certificate against".into());
    }
    let message = checkpoint_signing_bytes(gid, index, digest);
    let mut valid = 0;
    for (node, sig) in &cert.signatures {
        let (true, Some(key)) = (anchor.voters.contains(node), anchor.keys.get(node)) else {
            continue;
        };
        if !verify_signature(key, &message, &sig.0) {
            return Err(format!("node {node}'s signature does not verify"));
        }
        valid += 1;
    }
    let need = anchor.voters.len() / 2 + 1;
    if valid < need {
        return Err(format!(
            "{valid} valid signature(s) by voters {:?}; {need} needed",
            anchor.voters
        ));
    }
    Ok(valid)
}

impl GatekeeperState {
    /// The voters a node trusts to vouch for a state: those of the latest certified checkpoint,
    /// else the initial voters the operator named at init. A membership change the log carries
    /// (which a compromised leader can forge) counts only once a checkpoint signed by a
    /// majority of these certified it.
    pub fn certified_voters(&self) -> Option<&BTreeSet<NodeId>> {
        self.checkpoint
            .as_ref()
            .map(|c| &c.voters)
            .filter(|v| !v.is_empty())
            .or(Some(&self.genesis_voters).filter(|v| !v.is_empty()))
    }

    /// Applies `node`'s signature of its state at `index` (already authorized: a voter signing
    /// as itself). Records it as that node's vote; when a majority of `voters` signed the same
    /// digest at the same index, that checkpoint becomes the certified one. A signature for the
    /// certified checkpoint itself is added to its certificate.
    pub(super) fn apply_checkpoint_vote(
        &mut self,
        node: NodeId,
        voters: &BTreeSet<NodeId>,
        vote: CheckpointVote,
    ) -> Result<bool, Reply> {
        let Some(gid) = self.gatekeeper_id else {
            return Err(reject(
                RejectCode::NotInitialized,
                "cluster not initialised",
            ));
        };
        let key = self
            .members
            .get(&node)
            .map(|m| m.identity_public_key)
            .ok_or_else(|| {
                reject(
                    RejectCode::UnknownMember,
                    format!("node {node} is not a member"),
                )
            })?;
        let message = checkpoint_signing_bytes(&gid, vote.index, &vote.digest);
        if !verify_signature(&key, &message, &vote.signature.0) {
            return Err(reject(
                RejectCode::Unauthorized,
                format!("node {node}'s checkpoint signature does not verify"),
            ));
        }
        if let Some(c) = &mut self.checkpoint {
            if vote.index == c.index && vote.digest == c.digest {
                if c.signatures.contains_key(&node) {
                    return Ok(false);
                }
                c.signatures.insert(node, vote.signature);
                return Ok(true);
            }
            if vote.index <= c.index {
                return Err(reject(
                    RejectCode::InvalidState,
                    format!(
                        "checkpoint {} is at or below the certified checkpoint {}{}",
                        vote.index,
                        c.index,
                        if vote.index == c.index {
                            " with another digest"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        if self
            .checkpoint_votes
            .get(&node)
            .is_some_and(|v| v.index >= vote.index)
        {
            return Err(reject(
                RejectCode::InvalidState,
                format!(
                    "node {node} already signed checkpoint {}",
                    self.checkpoint_votes[&node].index
                ),
            ));
        }
        let (index, digest) = (vote.index, vote.digest);
        self.checkpoint_votes.insert(node, vote);
        // A majority of the voters in force and of the voters certified before (so a forged
        // membership entry cannot certify a state on its own).
        let previous = self.certified_voters().cloned().unwrap_or_default();
        let agreeing: BTreeMap<NodeId, HexBytes> = self
            .checkpoint_votes
            .iter()
            .filter(|(n, v)| {
                (voters.contains(n) || previous.contains(n))
                    && v.index == index
                    && v.digest == digest
            })
            .map(|(n, v)| (*n, v.signature.clone()))
            .collect();
        let majority_of = |set: &BTreeSet<NodeId>| {
            agreeing.keys().filter(|n| set.contains(n)).count() > set.len() / 2
        };
        if majority_of(voters) && (previous.is_empty() || majority_of(&previous)) {
            self.checkpoint = Some(CheckpointCertificate {
                index,
                digest,
                signatures: agreeing,
                voters: voters.clone(),
            });
            self.checkpoint_votes.retain(|_, v| v.index > index);
        }
        Ok(true)
    }
}

impl GatekeeperState {
    /// Signed checkpoint votes that disagree: the lowest index at which two nodes signed
    /// different digests of their state, and every vote at it (node, digest). Nodes that applied
    /// the same log hold the same state, so this means their logs differ under the same log ids
    /// (a leader that sent different entries to different followers) or a state machine
    /// diverged. Nothing is certified at that index again.
    pub fn disagreeing_checkpoint(&self) -> Option<(u64, Vec<(NodeId, Bytes32)>)> {
        let mut by_index: BTreeMap<u64, Vec<(NodeId, Bytes32)>> = BTreeMap::new();
        for (n, v) in &self.checkpoint_votes {
            by_index.entry(v.index).or_default().push((*n, v.digest));
        }
        by_index
            .into_iter()
            .find(|(_, votes)| votes.iter().any(|(_, d)| *d != votes[0].1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemberRecord;
    use keyring::Sr25519Keypair;

    fn key(n: u8) -> Sr25519Keypair {
        Sr25519Keypair::from_seed(&[n; 32])
    }

    fn state(nodes: &[u8]) -> GatekeeperState {
        let mut s = GatekeeperState {
            gatekeeper_id: Some(Bytes32([7; 32])),
            ..Default::default()
        };
        for &n in nodes {
            s.members.insert(
                n as NodeId,
                MemberRecord::for_tests(n as NodeId, Bytes32(*key(n).public_key().as_bytes())),
            );
        }
        s
    }

    fn vote(n: u8, index: u64, digest: u8) -> CheckpointVote {
        let d = Bytes32([digest; 32]);
        let m = checkpoint_signing_bytes(&Bytes32([7; 32]), index, &d);
        let sig = keyring::sign::sign(&key(n), SigningPurpose::Command, &m).0;
        CheckpointVote {
            index,
            digest: d,
            signature: HexBytes(sig.to_vec()),
        }
    }

    fn voters(v: &[NodeId]) -> BTreeSet<NodeId> {
        v.iter().copied().collect()
    }

    #[test]
    fn a_majority_agreeing_certifies_and_late_signers_join_the_certificate() {
        let mut s = state(&[1, 2, 3]);
        let v = voters(&[1, 2, 3]);
        assert_eq!(s.apply_checkpoint_vote(1, &v, vote(1, 10, 5)), Ok(true));
        assert_eq!(s.checkpoint, None, "one of three is not a majority");
        assert_eq!(s.disagreeing_checkpoint(), None);
        // Node 2 signed another digest (diverged): still no majority, and it shows.
        assert_eq!(s.apply_checkpoint_vote(2, &v, vote(2, 10, 6)), Ok(true));
        assert_eq!(s.checkpoint, None);
        assert_eq!(
            s.disagreeing_checkpoint(),
            Some((10, vec![(1, Bytes32([5; 32])), (2, Bytes32([6; 32]))]))
        );
        assert_eq!(s.apply_checkpoint_vote(3, &v, vote(3, 10, 5)), Ok(true));
        let c = s.checkpoint.clone().unwrap();
        assert_eq!((c.index, c.digest), (10, Bytes32([5; 32])));
        assert_eq!(c.signatures.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert!(
            s.checkpoint_votes.is_empty(),
            "votes at or below it are dropped"
        );
        let a = Anchor::from_state(&s, v.clone());
        assert_eq!(verify_certificate(&c, 10, &Bytes32([5; 32]), &a), Ok(2));
        // A late signer of the same digest is added; a repeat is a duplicate.
        let mut s2 = state(&[1, 2, 3, 4]);
        s2.checkpoint = Some(c);
        assert_eq!(s2.apply_checkpoint_vote(4, &v, vote(4, 10, 5)), Ok(true));
        assert_eq!(s2.apply_checkpoint_vote(4, &v, vote(4, 10, 5)), Ok(false));
        assert_eq!(s2.checkpoint.as_ref().unwrap().signatures.len(), 3);
        // Another digest at the certified index, or an older index, is refused.
        let r = s2.apply_checkpoint_vote(2, &v, vote(2, 10, 6)).unwrap_err();
        assert!(
            matches!(
                r,
                Reply::Rejected {
                    code: RejectCode::InvalidState,
                    ..
                }
            ),
            "{r:?}"
        );
        let r = s2.apply_checkpoint_vote(2, &v, vote(2, 5, 5)).unwrap_err();
        assert!(
            matches!(
                r,
                Reply::Rejected {
                    code: RejectCode::InvalidState,
                    ..
                }
            ),
            "{r:?}"
        );
    }

    #[test]
    fn a_forged_membership_cannot_certify_a_state_or_vouch_for_a_snapshot() {
        // Certified at 10 with voters 1-3; then a compromised leader (node 2) appends a
        // membership entry making itself the only voter.
        let mut s = state(&[1, 2, 3, 4]);
        let all = voters(&[1, 2, 3]);
        s.apply_checkpoint_vote(1, &all, vote(1, 10, 5)).unwrap();
        s.apply_checkpoint_vote(2, &all, vote(2, 10, 5)).unwrap();
        assert_eq!(s.certified_voters(), Some(&all));
        let forged = voters(&[2]);
        assert_eq!(
            s.apply_checkpoint_vote(2, &forged, vote(2, 20, 6)),
            Ok(true)
        );
        assert_eq!(
            s.checkpoint.as_ref().unwrap().index,
            10,
            "one of the certified voters"
        );
        // A node whose applied membership is the forged one still verifies snapshots against
        // the certified voters: node 2's signature alone is refused.
        let lone = CheckpointCertificate {
            index: 20,
            digest: Bytes32([6; 32]),
            signatures: [(2, vote(2, 20, 6).signature)].into_iter().collect(),
            voters: forged.clone(),
        };
        let anchor = Anchor::from_state(&s, s.certified_voters().unwrap().clone());
        assert!(verify_certificate(&lone, 20, &Bytes32([6; 32]), &anchor).is_err());
        // A real change (node 4 joins): a majority of the new voters that is also a majority
        // of the certified ones certifies, and the new voters become the certified ones.
        let grown = voters(&[1, 2, 3, 4]);
        s.apply_checkpoint_vote(4, &grown, vote(4, 30, 7)).unwrap();
        s.apply_checkpoint_vote(3, &grown, vote(3, 30, 7)).unwrap();
        assert_eq!(
            s.checkpoint.as_ref().unwrap().index,
            10,
            "2 of 4 is not a majority"
        );
        s.apply_checkpoint_vote(1, &grown, vote(1, 30, 7)).unwrap();
        let c = s.checkpoint.clone().unwrap();
        assert_eq!((c.index, &c.voters), (30, &grown));
        assert_eq!(s.certified_voters(), Some(&grown));
        // Before any certificate, the initial voters named at init vouch.
        let mut fresh = state(&[1, 2, 3]);
        fresh.genesis_voters = all.clone();
        fresh
            .apply_checkpoint_vote(2, &forged, vote(2, 10, 5))
            .unwrap();
        assert_eq!(fresh.checkpoint, None);
    }

    #[test]
    fn bad_signatures_and_non_voters_never_certify() {
        let mut s = state(&[1, 2, 3]);
        let v = voters(&[1, 2, 3]);
        // Node 2's vote signed by node 1's key.
        let forged = vote(1, 10, 5);
        let r = s.apply_checkpoint_vote(2, &v, forged).unwrap_err();
        assert!(
            matches!(
                r,
                Reply::Rejected {
                    code: RejectCode::Unauthorized,
                    ..
                }
            ),
            "{r:?}"
        );
        assert!(s.checkpoint_votes.is_empty());
        // Votes of members outside the voters do not count.
        let mut s = state(&[1, 2, 3, 4, 5]);
        s.apply_checkpoint_vote(4, &v, vote(4, 10, 5)).unwrap();
        s.apply_checkpoint_vote(5, &v, vote(5, 10, 5)).unwrap();
        s.apply_checkpoint_vote(1, &v, vote(1, 10, 5)).unwrap();
        assert_eq!(s.checkpoint, None);
        // One vote per node: a node cannot sign an older index after a newer one.
        let r = s.apply_checkpoint_vote(1, &v, vote(1, 8, 5)).unwrap_err();
        assert!(
            matches!(
                r,
                Reply::Rejected {
                    code: RejectCode::InvalidState,
                    ..
                }
            ),
            "{r:?}"
        );
        assert_eq!(s.checkpoint_votes.len(), 3, "bounded by the members");
    }

    #[test]
    fn a_certificate_verifies_only_against_a_majority_of_known_voters() {
        let s = state(&[1, 2, 3]);
        let d = Bytes32([5; 32]);
        let cert = |signers: &[u8]| CheckpointCertificate {
            index: 10,
            digest: d,
            signatures: signers
                .iter()
                .map(|&n| (n as NodeId, vote(n, 10, 5).signature))
                .collect(),
            voters: voters(&[1, 2, 3]),
        };
        let a = Anchor::from_state(&s, voters(&[1, 2, 3]));
        assert_eq!(verify_certificate(&cert(&[1, 2]), 10, &d, &a), Ok(2));
        assert_eq!(verify_certificate(&cert(&[1, 2, 3]), 10, &d, &a), Ok(3));
        // One signer (a compromised member alone) is not enough.
        let e = verify_certificate(&cert(&[1]), 10, &d, &a).unwrap_err();
        assert!(e.contains("1 valid signature(s)"), "{e}");
        // Signatures by nodes this node does not know as voters do not count.
        let mut extra = cert(&[1]);
        extra.signatures.insert(9, vote(9, 10, 5).signature);
        assert!(verify_certificate(&extra, 10, &d, &a).is_err());
        // Another index or digest than the snapshot's.
        assert!(verify_certificate(&cert(&[1, 2]), 11, &d, &a)
            .unwrap_err()
            .contains("index 10"));
        assert!(
            verify_certificate(&cert(&[1, 2]), 10, &Bytes32([6; 32]), &a)
                .unwrap_err()
                .contains("digest")
        );
        // A signature by the wrong key under a voter's name.
        let mut bad = cert(&[1, 2]);
        bad.signatures.insert(2, vote(3, 10, 5).signature);
        assert!(verify_certificate(&bad, 10, &d, &a)
            .unwrap_err()
            .contains("node 2's signature"));
        // Signatures for another cluster.
        let mut other = s.clone();
        other.gatekeeper_id = Some(Bytes32([8; 32]));
        let a2 = Anchor::from_state(&other, voters(&[1, 2, 3]));
        assert!(verify_certificate(&cert(&[1, 2, 3]), 10, &d, &a2).is_err());
        // Nothing to verify against.
        let empty = Anchor::default();
        assert!(empty.is_empty());
        assert!(verify_certificate(&cert(&[1, 2]), 10, &d, &empty).is_err());
    }
}
