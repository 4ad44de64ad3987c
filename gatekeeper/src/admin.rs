//! `gatekeeper admin`: the operator CLI over AdminService.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use gatekeeper_proto::v1 as pb;
use gatekeeper_proto::v1::admin_service_client::AdminServiceClient;
use serde_json::json;
use std::time::Duration;

/// Admin subcommands.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Initialise a new cluster on the endpoint node with the given voters (default: just it).
    Init {
        /// A voter as ID=RAFT_ADDR=API_ADDR; repeat for each.
        #[arg(long = "member")]
        members: Vec<String>,
    },
    /// Add a running node: learner first, voter once caught up.
    Join {
        /// The new node's id.
        #[arg(long)]
        node_id: u64,
        /// Its Raft address.
        #[arg(long)]
        raft_address: String,
        /// Its API address.
        #[arg(long)]
        api_address: String,
    },
    /// Remove a node from the cluster.
    Leave {
        /// The node to remove.
        #[arg(long)]
        node_id: u64,
    },
    /// Show this node's view of the cluster.
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List the members.
    Members {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a canary key through Raft (drills, tests).
    Put {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Read a canary key.
    Get {
        /// Key.
        key: String,
        /// linearizable (default) or stale.
        #[arg(long, default_value = "linearizable")]
        consistency: String,
    },
    /// Fault hook: isolate or heal this node's Raft traffic (needs fault_hooks = true).
    Fault {
        /// Drop all Raft RPCs in and out.
        #[arg(long, conflicts_with = "heal")]
        isolate: bool,
        /// Resume Raft traffic.
        #[arg(long)]
        heal: bool,
    },
}

fn role_name(r: i32) -> &'static str {
    match pb::Role::try_from(r).unwrap_or(pb::Role::Unspecified) {
        pb::Role::Leader => "leader",
        pb::Role::Follower => "follower",
        pb::Role::Candidate => "candidate",
        pb::Role::Learner => "learner",
        pb::Role::Uninitialized => "uninitialized",
        pb::Role::Unspecified => "unknown",
    }
}

fn members_json(ms: &[pb::Member]) -> serde_json::Value {
    ms.iter()
        .map(|m| {
            json!({"id": m.node_id, "raft_address": m.raft_address,
                   "api_address": m.api_address, "voter": m.voter})
        })
        .collect()
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", s.code(), s.message())
}

/// Runs one admin command against `endpoint`.
pub async fn run(endpoint: &str, timeout: Duration, cmd: AdminCommand) -> Result<()> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .with_context(|| format!("bad endpoint {endpoint:?}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let mut c = AdminServiceClient::new(ch);
    match cmd {
        AdminCommand::Init { members } => {
            let mut req = pb::InitRequest::default();
            for m in members {
                let parts: Vec<&str> = m.splitn(3, '=').collect();
                let [id, raft, api] = parts[..] else {
                    bail!("--member must be ID=RAFT_ADDR=API_ADDR, got {m:?}");
                };
                req.members.push(pb::InitMember {
                    node_id: id
                        .parse()
                        .with_context(|| format!("bad node id in {m:?}"))?,
                    raft_address: raft.into(),
                    api_address: api.into(),
                });
            }
            c.init(req).await.map_err(status_error)?;
            println!("initialised");
        }
        AdminCommand::Join {
            node_id,
            raft_address,
            api_address,
        } => {
            let r = c
                .join(pb::JoinRequest {
                    node_id,
                    raft_address,
                    api_address,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", json!({"log_index": r.log_index, "voter": r.voter}));
        }
        AdminCommand::Leave { node_id } => {
            let r = c
                .leave(pb::LeaveRequest { node_id })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", json!({"log_index": r.log_index}));
        }
        AdminCommand::Status { json: as_json } => {
            let s = c
                .status(pb::StatusRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let v = json!({
                "node_id": s.node_id,
                "role": role_name(s.role),
                "leader_id": s.leader_id,
                "term": s.term,
                "last_log_index": s.last_log_index,
                "last_applied": s.last_applied,
                "commit_index": s.commit_index,
                "members": members_json(&s.members),
                "audit_sequence": s.audit_sequence,
                "gatekeeper_id": hex::encode(&s.gatekeeper_id),
            });
            if as_json {
                println!("{v}");
            } else {
                println!(
                    "node {} ({}), term {}, leader {:?}",
                    s.node_id,
                    role_name(s.role),
                    s.term,
                    s.leader_id
                );
                println!(
                    "log index {}, applied {}, audit sequence {}",
                    s.last_log_index, s.last_applied, s.audit_sequence
                );
                for m in &s.members {
                    println!(
                        "  {:>4}  {:<8} raft={} api={}",
                        m.node_id,
                        if m.voter { "voter" } else { "learner" },
                        m.raft_address,
                        m.api_address
                    );
                }
            }
        }
        AdminCommand::Members { json: as_json } => {
            let r = c
                .members(pb::MembersRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if as_json {
                println!(
                    "{}",
                    json!({"leader_id": r.leader_id, "members": members_json(&r.members)})
                );
            } else {
                for m in &r.members {
                    println!(
                        "{} {} raft={} api={}",
                        m.node_id,
                        if m.voter { "voter" } else { "learner" },
                        m.raft_address,
                        m.api_address
                    );
                }
            }
        }
        AdminCommand::Put { key, value } => {
            let r = c
                .write_canary(pb::WriteCanaryRequest { key, value })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{}",
                json!({"log_index": r.log_index, "audit_sequence": r.audit_sequence, "leader_id": r.leader_id})
            );
        }
        AdminCommand::Get { key, consistency } => {
            let consistency = match consistency.as_str() {
                "linearizable" => pb::ReadConsistency::Linearizable,
                "stale" => pb::ReadConsistency::Stale,
                other => bail!("--consistency must be linearizable or stale, got {other:?}"),
            };
            let r = c
                .read_canary(pb::ReadCanaryRequest {
                    key,
                    consistency: consistency as i32,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{}",
                json!({"value": r.value, "applied_index": r.applied_index, "served_by": r.served_by, "staleness_ms": r.staleness_ms})
            );
        }
        AdminCommand::Fault { isolate, heal } => {
            if isolate == heal {
                bail!("pass exactly one of --isolate or --heal");
            }
            let r = c
                .set_fault(pb::SetFaultRequest { isolate })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", json!({"isolated": r.isolated}));
        }
    }
    Ok(())
}
