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
        /// Shares needed to rebuild the master secret (default: a majority of the members).
        #[arg(long, default_value_t = 0)]
        threshold: u32,
        /// Import this 64-byte master secret (file with 128 hex characters, e.g. a Phala
        /// cluster's key || nonce) instead of generating one. It is sealed to the endpoint node's
        /// enclave before it leaves this process.
        #[arg(long)]
        import_master_file: Option<std::path::PathBuf>,
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
    /// Start a master-key rotation (a new epoch with a fresh master secret).
    Rotate {
        /// Rotation id (default: a fresh one); the same id never rotates twice.
        #[arg(long, default_value = "")]
        rotation_id: String,
        /// Deadline in ms for dealing (default: the node's rotation_deadline_ms).
        #[arg(long, default_value_t = 0)]
        deadline_ms: u64,
        /// Reason, for the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Retire every epoch below --min-epoch (never the current one).
    Retire {
        /// New minimum epoch.
        #[arg(long)]
        min_epoch: u64,
    },
    /// DEVELOPMENT PATH: commit chain-shaped events (until the chain watcher exists).
    Dev {
        #[command(subcommand)]
        event: DevEvent,
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

/// Development events (hex ids are 64 characters).
#[derive(Subcommand, Debug)]
pub enum DevEvent {
    /// Register a worker.
    RegisterWorker {
        /// Worker sr25519 public key.
        #[arg(long)]
        worker: String,
        /// root | ias | dcap.
        #[arg(long, default_value = "root")]
        provider: String,
        /// Confidence level.
        #[arg(long, default_value_t = 1)]
        confidence: u32,
    },
    /// Deregister a worker.
    Deregister {
        /// Worker key.
        #[arg(long)]
        worker: String,
    },
    /// Slash a worker.
    Slash {
        /// Worker key.
        #[arg(long)]
        worker: String,
        /// Reason.
        #[arg(long, default_value = "dev")]
        reason: String,
    },
    /// Create a cluster with workers.
    CreateCluster {
        /// Cluster id.
        #[arg(long)]
        cluster: String,
        /// Initial workers.
        #[arg(long = "worker")]
        workers: Vec<String>,
        /// native | phala.
        #[arg(long, default_value = "native")]
        scheme: String,
    },
    /// Add a worker to a cluster.
    AddToCluster {
        /// Worker.
        #[arg(long)]
        worker: String,
        /// Cluster.
        #[arg(long)]
        cluster: String,
    },
    /// Remove a worker from a cluster.
    RemoveFromCluster {
        /// Worker.
        #[arg(long)]
        worker: String,
        /// Cluster.
        #[arg(long)]
        cluster: String,
    },
    /// Instantiate a contract on a cluster.
    Instantiate {
        /// Contract.
        #[arg(long)]
        contract: String,
        /// Cluster.
        #[arg(long)]
        cluster: String,
    },
}

fn hexid(s: &str) -> Result<Vec<u8>> {
    let b = hex::decode(s).with_context(|| format!("{s:?} is not hex"))?;
    if b.len() != 32 {
        bail!("{s:?} must be 32 bytes (64 hex characters)");
    }
    Ok(b)
}

fn dev_request(e: DevEvent) -> Result<pb::ApplyDevEventRequest> {
    use pb::apply_dev_event_request::Event as E;
    let event = match e {
        DevEvent::RegisterWorker {
            worker,
            provider,
            confidence,
        } => E::WorkerRegistered(pb::DevWorkerRegistered {
            worker: hexid(&worker)?,
            attestation_provider: provider,
            confidence_level: confidence,
        }),
        DevEvent::Deregister { worker } => E::WorkerDeregistered(pb::DevWorkerDeregistered {
            worker: hexid(&worker)?,
        }),
        DevEvent::Slash { worker, reason } => E::WorkerSlashed(pb::DevWorkerSlashed {
            worker: hexid(&worker)?,
            reason,
        }),
        DevEvent::CreateCluster {
            cluster,
            workers,
            scheme,
        } => E::ClusterCreated(pb::DevClusterCreated {
            cluster: hexid(&cluster)?,
            workers: workers.iter().map(|w| hexid(w)).collect::<Result<_>>()?,
            scheme: match scheme.as_str() {
                "native" => pb::DerivationScheme::Native as i32,
                "phala" => pb::DerivationScheme::Phala as i32,
                other => bail!("--scheme must be native or phala, got {other:?}"),
            },
        }),
        DevEvent::AddToCluster { worker, cluster } => {
            E::WorkerAddedToCluster(pb::DevWorkerAddedToCluster {
                worker: hexid(&worker)?,
                cluster: hexid(&cluster)?,
            })
        }
        DevEvent::RemoveFromCluster { worker, cluster } => {
            E::WorkerRemovedFromCluster(pb::DevWorkerRemovedFromCluster {
                worker: hexid(&worker)?,
                cluster: hexid(&cluster)?,
            })
        }
        DevEvent::Instantiate { contract, cluster } => {
            E::ContractInstantiated(pb::DevContractInstantiated {
                contract: hexid(&contract)?,
                cluster: hexid(&cluster)?,
            })
        }
    };
    Ok(pb::ApplyDevEventRequest { event: Some(event) })
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

fn seal_text(s: &Option<pb::SealStatus>) -> String {
    match s {
        None => "sealed".into(),
        Some(s) => match pb::SealState::try_from(s.state).unwrap_or(pb::SealState::Sealed) {
            pb::SealState::Unsealed => "unsealed".into(),
            pb::SealState::Unsealing => format!("unsealing {}/{}", s.shares_collected, s.threshold),
            _ => "sealed".into(),
        },
    }
}

fn epoch_status_name(s: i32) -> &'static str {
    match pb::EpochStatus::try_from(s).unwrap_or(pb::EpochStatus::Unspecified) {
        pb::EpochStatus::Dealing => "dealing",
        pb::EpochStatus::Active => "active",
        pb::EpochStatus::Retired => "retired",
        pb::EpochStatus::Aborted => "aborted",
        pb::EpochStatus::Unspecified => "unknown",
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

fn chain_json(c: &pb::ChainStatus) -> serde_json::Value {
    json!({
        "url": c.url,
        "profile": c.profile,
        "connected": c.connected,
        "stalled": c.stalled,
        "finalized": c.finalized,
        "last_finalized_age_ms": c.last_finalized_age_ms,
        "cursor": {
            "block": c.cursor_block,
            "block_hash": hex::encode(&c.cursor_block_hash),
            "event_index": c.cursor_event_index,
            "block_complete": c.cursor_block_complete,
        },
        "lag_blocks": c.lag_blocks,
        "genesis_hash": hex::encode(&c.genesis_hash),
        "events_applied": c.events_applied,
        "events_ignored": c.events_ignored,
        "recent_ignored": c.recent_ignored.iter().map(|i| json!({
            "block": i.block, "index": i.index, "name": i.name, "reason": i.reason,
        })).collect::<Vec<_>>(),
        "last_error": c.last_error,
        "reconnects": c.reconnects,
    })
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", s.code(), s.message())
}

/// Connects to the AdminService at `endpoint` (host:port); every call gets `timeout`.
pub async fn connect(
    endpoint: &str,
    timeout: Duration,
) -> Result<AdminServiceClient<tonic::transport::Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .with_context(|| format!("bad endpoint {endpoint:?}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    Ok(AdminServiceClient::new(ch))
}

/// Runs one admin command against `endpoint`.
pub async fn run(endpoint: &str, timeout: Duration, cmd: AdminCommand) -> Result<()> {
    let mut c = connect(endpoint, timeout).await?;
    match cmd {
        AdminCommand::Init {
            members,
            threshold,
            import_master_file,
        } => {
            let mut req = pb::InitRequest {
                threshold,
                ..Default::default()
            };
            if let Some(path) = import_master_file {
                let text = zeroize::Zeroizing::new(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                );
                let secret = zeroize::Zeroizing::new(
                    hex::decode(text.trim())
                        .ok()
                        .filter(|b| b.len() == 64)
                        .with_context(|| {
                            format!("{} must hold 128 hex characters", path.display())
                        })?,
                );
                let s = c
                    .status(pb::StatusRequest {})
                    .await
                    .map_err(status_error)?
                    .into_inner();
                let recipient = keyring::X25519PublicKey::from_slice(&s.enclave_hpke_public_key)
                    .context("the node did not report its enclave HPKE key")?;
                let ctx = keyring::envelope::EnvelopeContext {
                    purpose: keyring::envelope::Purpose::MasterImport,
                    gatekeeper_id: keyring::GatekeeperId([0; 32]),
                    epoch: 0,
                    subject: keyring::envelope::subject::master_import(),
                    recipient,
                };
                let env = keyring::envelope::seal(&ctx, &secret, &mut rand_core::OsRng)
                    .context("sealing the master secret")?;
                req.imported_master_secret = Some(pb::HpkeEnvelope {
                    version: env.version,
                    encapped_key: env.encapped_key.to_vec(),
                    ciphertext: env.ciphertext,
                });
            }
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
            let r = c.init(req).await.map_err(status_error)?.into_inner();
            println!(
                "{}",
                json!({
                    "gatekeeper_id": hex::encode(&r.gatekeeper_id),
                    "threshold": r.threshold,
                    "imported_master_public_key": hex::encode(&r.master_public_key),
                })
            );
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
                "seal_status": seal_text(&s.seal),
                "epochs": s.epochs.iter().map(|e| json!({
                    "epoch": e.epoch,
                    "status": epoch_status_name(e.status),
                    "threshold": e.threshold,
                    "master_public_key": hex::encode(&e.master_public_key),
                    "cluster_signing_public_key": hex::encode(&e.cluster_signing_public_key),
                })).collect::<Vec<_>>(),
                "chain": s.chain.as_ref().map(chain_json),
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
                println!("seal: {}", seal_text(&s.seal));
                for e in &s.epochs {
                    println!(
                        "  epoch {:>3}  {:<8} threshold {} master {}",
                        e.epoch,
                        epoch_status_name(e.status),
                        e.threshold,
                        hex::encode(&e.master_public_key)
                    );
                }
                match &s.chain {
                    None => println!("chain: none configured"),
                    Some(ch) => {
                        println!(
                            "chain: {} ({} profile), {}{}",
                            ch.url,
                            ch.profile,
                            if ch.connected {
                                "connected"
                            } else {
                                "DISCONNECTED"
                            },
                            if ch.stalled { ", STALLED" } else { "" }
                        );
                        println!(
                            "  finalized {}, cursor {} (event {}{}), lag {} blocks; events applied {}, ignored {}",
                            ch.finalized,
                            ch.cursor_block,
                            ch.cursor_event_index,
                            if ch.cursor_block_complete { ", complete" } else { "" },
                            ch.lag_blocks,
                            ch.events_applied,
                            ch.events_ignored
                        );
                        if !ch.last_error.is_empty() {
                            println!("  last error: {}", ch.last_error);
                        }
                        for i in &ch.recent_ignored {
                            println!(
                                "  ignored: block {} event {} {}: {}",
                                i.block, i.index, i.name, i.reason
                            );
                        }
                    }
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
        AdminCommand::Rotate {
            rotation_id,
            deadline_ms,
            reason,
        } => {
            let r = c
                .rotate(pb::RotateRequest {
                    rotation_id,
                    deadline_ms,
                    reason,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{}",
                json!({"rotation_id": r.rotation_id, "epoch": r.epoch})
            );
        }
        AdminCommand::Retire { min_epoch } => {
            let r = c
                .retire(pb::RetireRequest { min_epoch })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{}",
                json!({"retired": r.retired, "min_epoch": r.min_epoch})
            );
        }
        AdminCommand::Dev { event } => {
            let r = c
                .apply_dev_event(dev_request(event)?)
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{}",
                json!({"log_index": r.log_index, "audit_sequence": r.audit_sequence})
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
