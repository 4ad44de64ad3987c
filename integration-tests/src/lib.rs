//! Helpers for tests that start real `gatekeeper` processes.
//!
//! * [`gatekeeper_bin`] finds (or builds) the workspace's `gatekeeper` binary.
//! * [`Cluster`] runs `gatekeeper node` processes on loopback ports, each with its own config,
//!   data dir and log files in a temporary directory, and drives them through the operator CLI
//!   (`gatekeeper admin --endpoint … <cmd>`, whose JSON output is parsed into [`Status`],
//!   [`MembersView`], [`PutAck`] and [`GetReply`]). Bulk traffic (write loads, benchmarks) goes
//!   through the gRPC client returned by [`admin_client`].
//!
//! Every wait is bounded ([`Cluster::wait_for`]); on timeout it panics with what it was waiting for,
//! the last observation, and the tail of every node's logs. Dropping a [`Cluster`] kills its
//! processes; when the dropping thread is panicking the temporary directory is kept and its path
//! printed, so a failed run can be inspected.
//!
//! Only one [`Cluster`] exists at a time in a process (a global lock, taken by
//! [`Cluster::start`]): `cargo test` runs tests on parallel threads, and several multi-node
//! clusters at once on a 2-core machine would turn election timeouts into flakiness.
//!
//! # Layout
//!
//! Everything is re-exported here; the modules are private.
//!
//! * `processes`: locating and building the binaries ([`gatekeeper_bin`], [`devchain_bin`]),
//!   running short-lived commands with a timeout ([`run_command`], [`run_admin`] →
//!   [`AdminOutput`]) and reading log files ([`tail_lines`]).
//! * `cluster`: [`Cluster`] and its [`Opts`]; its `impl` is split into `cluster/lifecycle.rs`
//!   (starting, stopping, restarting nodes), `cluster/admin.rs` (operator-CLI wrappers and
//!   `/metrics`) and `cluster/waits.rs` (bounded waits: leader, convergence).
//! * `clients`: [`admin_client`] and the JSON views of the CLI's output ([`Status`],
//!   [`MembersView`], [`PutAck`], [`GetReply`], [`ChainView`], …).
//! * `util`: the time bounds ([`WAIT`], [`ADMIN_TIMEOUT`], [`JOIN_TIMEOUT`], [`POLL`]) and
//!   [`http_get`].
//! * [`devchain`]: a `gatekeeper-devchain` process for chain tests ([`DevChainProc`]).

#![forbid(unsafe_code)]

mod clients;
mod cluster;
pub mod devchain;
mod processes;
mod util;

pub use clients::{
    admin_client, error_code, signed_worker_request, BootstrapView, ChainView, ClientCerts,
    Consistency, CursorView, EpochView, GetReply, IgnoredView, Member, MembersView, PutAck, Raw,
    Status, Target,
};
pub use cluster::{Cluster, Opts};
pub use devchain::{DevChainOpts, DevChainProc};
pub use gatekeeper_proto::v1 as pb;
pub use processes::{
    client_example_bin, devchain_bin, gatekeeper_bin, run_admin, run_command, tail_lines,
    AdminOutput,
};
pub use util::{env_or, http_get, http_status, ADMIN_TIMEOUT, JOIN_TIMEOUT, POLL, WAIT};
