//! The keeper: drives the master-key lifecycle from the replicated state (design.md §6).
//!
//! Split as openraft splits its engine from its runtime:
//!
//! * [`plan`] — pure. From the committed state, the Raft membership, what this node's enclave
//!   holds, the keeper's settings and `now`, it decides the next [`Step`]s. Unit-tested as data
//!   (`keeper/tests.rs`): no enclave, no network, no clock.
//! * [`runtime::Keeper`] — every 200 ms it syncs the enclave with the committed epochs, asks
//!   [`plan`] what to do and executes the steps (enclave calls, Raft writes, FetchShare calls).
//!
//! Every step is idempotent and safe to repeat after a crash or leader change:
//!
//! 1. **register** — a member whose record lacks its current enclave keys writes `UpsertMember`
//!    (identity key, HPKE key, evidence over both);
//! 2. **deal** (leader) — once the cluster is initialised and every voter is registered (and its
//!    registration evidence passes the member policy), the genesis dealer (the node holding an
//!    imported secret, else the leader) deals epoch 0; the leader removes records of departed
//!    members, deals a rotation's epoch or aborts it after its deadline, starts queued (chain)
//!    rotations, and re-deals an epoch when the voters differ from its share holders or a holder
//!    re-registered with a new enclave key;
//! 3. **ack** — a node opens its share of each current dealing inside its enclave, verifies it
//!    against the commitments and commits `AckShare`;
//! 4. **unseal** — for each active epoch whose master is not in memory, it collects verified
//!    shares from peers (`PeerService.FetchShare`) until it has `t`, then rebuilds the master.

mod plan;
pub mod runtime;

#[cfg(test)]
mod tests;

pub use plan::{plan, reported_seal, EnclaveView, Membership, PlanConfig, SealView, Step};
pub use runtime::Keeper;
