//! Proofs of election: a leader shows the votes that elected it.
//!
//! openraft believes any message carrying a *committed* vote of a newer term: the node it names
//! is taken as that term's leader without any evidence that it won an election. A member with
//! its own certificate could therefore act as leader whenever it liked, and append what only a
//! leader may (chain blocks, re-dealings, membership changes: found by attack). Now:
//!
//! * a node that grants its vote to a candidate signs [`grant_signing_bytes`]`(term, candidate)`
//!   with its enclave identity key and returns the signature in `VoteResponse.grant`;
//! * the candidate keeps the grants it received ([`Elections`]) and, once leader, sends them
//!   with its own in every `AppendEntries` and snapshot (`election`);
//! * a follower accepts a message of a committed vote it has not verified yet only if
//!   [`verify_election`] finds grants from more than half of the voters it trusts
//!   ([`crate::state::GatekeeperState::certified_voters`]), each verified with the key its own
//!   state holds.
//!
//! While a leader is alive, openraft's leader lease makes voters refuse other candidates, so a
//! member can no longer lead without the others' consent.

use crate::state::{Anchor, CommandSigner};
use crate::NodeId;
use keyring::sign::SigningPurpose;
use keyring::{Signature, Sr25519PublicKey};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// Domain tag of vote grants.
pub const ELECTION_TAG: &[u8] = b"gatekeeper/election/v1\0";

/// Terms of grants kept (the newest).
const KEEP_TERMS: usize = 4;

/// The bytes a vote grant signs: the tag, the term and the candidate (big endian). Signed with
/// the granting node's identity key, context `gatekeeper/v1/command`. (No cluster id: a leader
/// elected before init keeps leading after it.)
pub fn grant_signing_bytes(term: u64, candidate: NodeId) -> Vec<u8> {
    let mut m = Vec::with_capacity(ELECTION_TAG.len() + 16);
    m.extend_from_slice(ELECTION_TAG);
    m.extend_from_slice(&term.to_be_bytes());
    m.extend_from_slice(&candidate.to_be_bytes());
    m
}

/// Checks that `grants` (granting node → signature) prove `leader` won `term`: valid grants by
/// more than half of `anchor`'s voters, with the keys `anchor` holds. A node that cannot check
/// (not initialised, or most of its voters not registered yet: the bootstrap window) accepts.
pub fn verify_election(
    term: u64,
    leader: NodeId,
    grants: &BTreeMap<NodeId, Vec<u8>>,
    anchor: &Anchor,
) -> Result<usize, String> {
    let known = anchor
        .voters
        .iter()
        .filter(|v| anchor.keys.contains_key(v))
        .count();
    if anchor.gatekeeper_id.is_none() || known <= anchor.voters.len() / 2 {
        return Ok(0);
    }
    let message = grant_signing_bytes(term, leader);
    let mut valid = 0;
    // Voters that have not registered a key yet (only while the cluster bootstraps: a joined
    // node is made a voter once registered) cannot be verified; their grants count as given.
    let mut unverifiable = 0;
    for (node, sig) in grants {
        if !anchor.voters.contains(node) {
            continue;
        }
        let Some(key) = anchor.keys.get(node) else {
            unverifiable += 1;
            continue;
        };
        let ok = Sr25519PublicKey::from_slice(&key.0).is_ok_and(|pk| {
            <[u8; 64]>::try_from(sig.as_slice()).is_ok_and(|s| {
                keyring::sign::verify(&pk, SigningPurpose::Command, &message, &Signature(s)).is_ok()
            })
        });
        if !ok {
            return Err(format!("node {node}'s vote grant does not verify"));
        }
        valid += 1;
    }
    let need = anchor.voters.len() / 2 + 1;
    if valid + unverifiable < need {
        return Err(format!(
            "no proof that node {leader} won the election of term {term}: {valid} valid vote \
             grant(s) by the voters {:?} (grants from {:?}), {need} needed",
            anchor.voters,
            grants.keys().collect::<Vec<_>>()
        ));
    }
    Ok(valid)
}

#[derive(Default)]
struct Inner {
    /// (term, candidate) → granting node → signature.
    grants: BTreeMap<(u64, NodeId), BTreeMap<NodeId, Vec<u8>>>,
    /// The newest (term, leader) this node verified (or accepted during bootstrap).
    verified: Option<(u64, NodeId)>,
}

/// This node's side of proofs of election: the signer, grants received as a candidate, and the
/// leader last verified as a follower. Cheap to clone; clones share.
#[derive(Clone, Default)]
pub struct Elections {
    signer: Arc<RwLock<Option<Arc<dyn CommandSigner>>>>,
    inner: Arc<Mutex<Inner>>,
}

impl Elections {
    /// Uses `signer` (shared with the replica's proposals) for this node's grants.
    pub fn with_signer(signer: Arc<RwLock<Option<Arc<dyn CommandSigner>>>>) -> Self {
        Self {
            signer,
            inner: Default::default(),
        }
    }

    /// This node's grant of its vote to `candidate` in `term` (none without a signer yet).
    pub fn grant(&self, term: u64, candidate: NodeId) -> Vec<u8> {
        let signer = self.signer.read().expect("signer lock").clone();
        signer
            .map(|s| s.sign(&grant_signing_bytes(term, candidate)).to_vec())
            .unwrap_or_default()
    }

    /// Records `from`'s grant to this node as candidate in `term`.
    pub fn record(&self, term: u64, candidate: NodeId, from: NodeId, signature: Vec<u8>) {
        if signature.is_empty() {
            return;
        }
        let mut i = self.inner.lock().expect("elections lock");
        i.grants
            .entry((term, candidate))
            .or_default()
            .insert(from, signature);
        while i.grants.len() > KEEP_TERMS {
            i.grants.pop_first();
        }
    }

    /// The proof this node sends as leader of `term`: the grants it received and its own.
    pub fn proof(&self, term: u64, me: NodeId) -> BTreeMap<NodeId, Vec<u8>> {
        let own = self.grant(term, me);
        let mut i = self.inner.lock().expect("elections lock");
        let g = i.grants.entry((term, me)).or_default();
        if !own.is_empty() {
            g.insert(me, own);
        }
        g.clone()
    }

    /// Whether this node won `term` in this process's lifetime: another voter's grant for it
    /// was recorded (a leader restored from its persisted vote after a restart has none).
    pub fn won(&self, term: u64, me: NodeId) -> bool {
        self.inner
            .lock()
            .expect("elections lock")
            .grants
            .get(&(term, me))
            .is_some_and(|g| g.keys().any(|n| *n != me))
    }

    /// Whether (term, leader) was verified already.
    pub fn is_verified(&self, term: u64, leader: NodeId) -> bool {
        self.inner.lock().expect("elections lock").verified == Some((term, leader))
    }

    /// Remembers a verified (term, leader).
    pub fn set_verified(&self, term: u64, leader: NodeId) {
        self.inner.lock().expect("elections lock").verified = Some((term, leader));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Bytes32;
    use keyring::Sr25519Keypair;

    fn key(n: u8) -> Sr25519Keypair {
        Sr25519Keypair::from_seed(&[n; 32])
    }

    fn grant(n: u8, term: u64, candidate: NodeId) -> (NodeId, Vec<u8>) {
        let s = keyring::sign::sign(
            &key(n),
            SigningPurpose::Command,
            &grant_signing_bytes(term, candidate),
        );
        (NodeId::from(n), s.0.to_vec())
    }

    fn anchor(voters: &[u8], keys: &[u8]) -> Anchor {
        Anchor {
            gatekeeper_id: Some(Bytes32([7; 32])),
            voters: voters.iter().map(|&n| NodeId::from(n)).collect(),
            keys: keys
                .iter()
                .map(|&n| (NodeId::from(n), Bytes32(*key(n).public_key().as_bytes())))
                .collect(),
        }
    }

    #[test]
    fn a_leader_proves_its_election_with_a_majority_of_grants() {
        let a = anchor(&[1, 2, 3], &[1, 2, 3]);
        let g = |v: &[(NodeId, Vec<u8>)]| v.iter().cloned().collect::<BTreeMap<_, _>>();
        assert_eq!(
            verify_election(5, 2, &g(&[grant(2, 5, 2), grant(3, 5, 2)]), &a),
            Ok(2)
        );
        // Its own grant alone: the attack (a member acting as leader of a term it invented).
        let e = verify_election(5, 2, &g(&[grant(2, 5, 2)]), &a).unwrap_err();
        assert!(
            e.contains("no proof that node 2 won the election of term 5"),
            "{e}"
        );
        // Grants for another term or candidate, or by another key, do not verify.
        assert!(verify_election(6, 2, &g(&[grant(2, 5, 2), grant(3, 5, 2)]), &a).is_err());
        assert!(verify_election(5, 1, &g(&[grant(2, 5, 2), grant(3, 5, 2)]), &a).is_err());
        let mut forged = g(&[grant(2, 5, 2)]);
        forged.insert(3, grant(2, 5, 2).1);
        assert!(verify_election(5, 2, &forged, &a)
            .unwrap_err()
            .contains("node 3's vote grant"));
        // Grants by non-voters do not count.
        assert!(verify_election(
            5,
            2,
            &g(&[grant(2, 5, 2), grant(4, 5, 2)]),
            &anchor(&[1, 2, 3], &[1, 2, 3, 4])
        )
        .is_err());
        // Bootstrap: uninitialised, or most voters not registered yet.
        assert_eq!(
            verify_election(5, 2, &BTreeMap::new(), &Anchor::default()),
            Ok(0)
        );
        assert_eq!(
            verify_election(5, 2, &BTreeMap::new(), &anchor(&[1, 2, 3], &[1])),
            Ok(0)
        );
        assert!(verify_election(5, 2, &BTreeMap::new(), &anchor(&[1, 2, 3], &[1, 2])).is_err());
        // A leader that has not registered its own key yet, elected by a registered voter (the
        // bootstrap race seen in tests: it must be able to commit its own registration).
        let early = anchor(&[1, 2, 3], &[1, 2]);
        assert_eq!(
            verify_election(5, 3, &g(&[grant(2, 5, 3), grant(3, 5, 3)]), &early),
            Ok(1)
        );
        assert!(verify_election(5, 3, &g(&[grant(3, 5, 3)]), &early).is_err());
    }

    #[test]
    fn a_candidate_collects_grants_and_adds_its_own() {
        struct K(Sr25519Keypair);
        impl CommandSigner for K {
            fn node_id(&self) -> NodeId {
                2
            }
            fn sign(&self, m: &[u8]) -> [u8; 64] {
                keyring::sign::sign(&self.0, SigningPurpose::Command, m).0
            }
        }
        let signer: Arc<RwLock<Option<Arc<dyn CommandSigner>>>> = Arc::default();
        let e = Elections::with_signer(signer.clone());
        assert!(e.grant(5, 2).is_empty(), "no signer yet");
        *signer.write().unwrap() = Some(Arc::new(K(key(2))));
        let (from, sig) = grant(3, 5, 2);
        e.record(5, 2, from, sig);
        e.record(5, 2, 1, vec![]);
        let proof = e.proof(5, 2);
        assert_eq!(proof.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(
            verify_election(5, 2, &proof, &anchor(&[1, 2, 3], &[1, 2, 3])),
            Ok(2)
        );
        for t in 6..20 {
            e.record(t, 2, 3, vec![1]);
        }
        assert!(e.proof(5, 2).len() == 1, "old terms are dropped");
        assert!(!e.is_verified(5, 2));
        e.set_verified(5, 2);
        assert!(e.is_verified(5, 2));
    }
}
