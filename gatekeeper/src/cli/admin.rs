//! `gatekeeper admin`: the operator CLI over AdminService.

use crate::cli::sign::OperatorSigner;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use gatekeeper_client::error_chain;
use gatekeeper_proto::v1 as pb;
use gatekeeper_proto::v1::admin_service_client::AdminServiceClient;
use gatekeeper_raft::state::{Bytes32, Command};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the CLI reaches a node's admin listener: mutual TLS with an operator certificate (the
/// default), or plaintext for a development node with `plaintext = true`. Every flag also reads a
/// `GATEKEEPER_ADMIN_*` variable, so an operator sets them once per shell.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AdminTls {
    /// PEM bundle of the CA that signed the nodes' certificates (the cluster CA).
    #[arg(long = "ca", id = "tls_ca", env = "GATEKEEPER_ADMIN_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// PEM operator certificate (`gatekeeper certs operator`).
    #[arg(
        long = "cert",
        id = "tls_cert",
        env = "GATEKEEPER_ADMIN_CERT",
        global = true
    )]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(
        long = "key",
        id = "tls_key",
        env = "GATEKEEPER_ADMIN_KEY",
        global = true
    )]
    pub key: Option<PathBuf>,
    /// The name the node's certificate must be valid for (default: the endpoint's host).
    #[arg(
        long,
        id = "tls_server_name",
        env = "GATEKEEPER_ADMIN_SERVER_NAME",
        global = true
    )]
    pub server_name: Option<String>,
    /// Connect without TLS (only a development node with `plaintext = true` accepts this).
    #[arg(
        long,
        id = "tls_plaintext",
        env = "GATEKEEPER_ADMIN_PLAINTEXT",
        global = true
    )]
    pub plaintext: bool,
}

impl AdminTls {
    /// Plaintext (development nodes).
    pub fn plaintext() -> AdminTls {
        AdminTls {
            plaintext: true,
            ..Default::default()
        }
    }

    /// Mutual TLS with the given CA, operator certificate and key.
    pub fn mutual(ca: &Path, cert: &Path, key: &Path) -> AdminTls {
        AdminTls {
            ca: Some(ca.to_path_buf()),
            cert: Some(cert.to_path_buf()),
            key: Some(key.to_path_buf()),
            ..Default::default()
        }
    }

    /// The endpoint for `address` (host:port), with TLS unless plaintext.
    pub fn endpoint(&self, address: &str) -> Result<tonic::transport::Endpoint> {
        if address.contains("://") {
            bail!(
                "endpoint {address:?}: give host:port without a scheme (TLS is chosen by \
                 --ca/--cert/--key or --plaintext)"
            );
        }
        if self.plaintext {
            if self.ca.is_some() || self.cert.is_some() || self.key.is_some() {
                bail!("--plaintext cannot be combined with --ca, --cert or --key");
            }
            return tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                .with_context(|| format!("bad endpoint {address:?}"));
        }
        let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) else {
            bail!(
                "the admin listener uses mutual TLS: pass --ca (the cluster CA), --cert and --key \
                 (an operator certificate from `gatekeeper certs operator`), or set \
                 GATEKEEPER_ADMIN_CA, GATEKEEPER_ADMIN_CERT and GATEKEEPER_ADMIN_KEY; for a \
                 development node with plaintext = true use --plaintext"
            );
        };
        let tls = crate::tls::ClientTls::load(ca, Some((cert, key)), crate::clock::now())?;
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| gatekeeper_raft::network::host_of(address).to_string());
        Ok(tls.endpoint(address, &name)?)
    }
}

/// An operator-readable explanation of a failed connection or call: the error chain, plus what
/// usually causes it.
pub fn explain(endpoint: &str, plaintext: bool, detail: &str) -> String {
    let d = detail.to_ascii_lowercase();
    let hint = if d.contains("notvalidforname") || d.contains("not valid for name") {
        "the node's certificate is not valid for this host name: connect by a name it has, or \
         pass --server-name"
    } else if d.contains("expired") || d.contains("notvalidyet") || d.contains("not valid yet") {
        "a certificate is outside its validity period (the node's, or yours)"
    } else if d.contains("unknownissuer")
        || d.contains("unknown issuer")
        || d.contains("invalid peer certificate")
    {
        "the node's certificate is not signed by the CA given with --ca (wrong CA?)"
    } else if d.contains("certificaterequired") || d.contains("certificate required") {
        "the node requires a client certificate: pass --cert and --key"
    } else if d.contains("unknownca") || d.contains("unknown ca") {
        "the node does not trust the CA that issued your certificate (its operator_ca_file)"
    } else if d.contains("accessdenied") || d.contains("access denied") {
        "your certificate's name is not in the node's operator_names allowlist"
    } else if d.contains("decrypterror") || d.contains("decrypt error") {
        "the node could not verify your certificate's signature: it was not issued by the CA \
         the node trusts for operators (a CA with the same name is not the same CA)"
    } else if d.contains("badcertificate") || d.contains("bad certificate") {
        "the node refused your certificate"
    } else if d.contains("invalidcontenttype") || d.contains("corrupt message") {
        "the endpoint does not speak TLS: a development node with plaintext = true (then use \
         --plaintext), or not the admin listener (the metrics port speaks plain HTTP)"
    } else if d.contains("frame with invalid size") || d.contains("invalid http version") {
        "the endpoint speaks TLS (a plaintext HTTP/2 client got TLS bytes back): drop \
         --plaintext and pass --ca, --cert and --key"
    } else if d.contains("connection refused") {
        "nothing listens there: is it the node's admin_listen address (default 127.0.0.1 with \
         api_listen's port + 1)?"
    } else if plaintext {
        "if the node uses TLS (the default), drop --plaintext and pass --ca, --cert and --key"
    } else {
        ""
    };
    if hint.is_empty() {
        format!("{endpoint}: {detail}")
    } else {
        format!("{endpoint}: {detail}\nhint: {hint}")
    }
}

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
        /// Ask every member (at the admin address it registered) and print one row each, with
        /// what they disagree on.
        #[arg(long)]
        all: bool,
    },
    /// Health: this node alone (exit 0 when it follows a leader and is unsealed, else 1), or with
    /// --cluster every member, with the Raft and unseal failure tolerance (exit 0 healthy, 1
    /// degraded: serving but something is wrong, 2 not serving: no quorum or no unsealed voter).
    Health {
        /// Ask every member.
        #[arg(long)]
        cluster: bool,
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
        /// Wait until the rotation completes or aborts, printing its progress to stderr: exit 0
        /// when the new epoch is active, 1 with the reason when it aborted.
        #[arg(long)]
        wait: bool,
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
    /// Register or remove operators (who may sign operator commands); signed with --key.
    Operators {
        #[command(subcommand)]
        change: OperatorChange,
    },
    /// Backups: `snapshot save FILE` writes this node's newest certified snapshot with its
    /// manifest (read it with `gatekeeper snapshot inspect`, restore with `gatekeeper restore`).
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

/// Changes to the registered operators.
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Stream the node's newest snapshot into FILE (written whole, then renamed; mode 0600),
    /// checking its size and SHA-256 against the manifest. Prints the manifest's summary.
    Save {
        /// The backup file to write (refused if it exists, unless --force).
        file: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

/// Operator changes.
#[derive(Subcommand, Debug)]
pub enum OperatorChange {
    /// Register the operator whose certificate is --cert-file (its common name and P-256 key).
    Add {
        /// The new operator's certificate (PEM), e.g. from `gatekeeper certs operator`.
        #[arg(long = "cert-file")]
        cert_file: PathBuf,
    },
    /// Remove an operator (never the last one).
    Remove {
        /// Its name.
        #[arg(long)]
        name: String,
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

/// The AdminService client every subcommand talks through.
type Client = AdminServiceClient<tonic::transport::Channel>;

// ---------------------------------------------------------------------------------------------
// Operator input → requests (pure).

fn hexid(s: &str) -> Result<Vec<u8>> {
    // `0x`-prefixed (as the dev chain and Substrate tools print ids) or bare.
    let b = hex::decode(s.strip_prefix("0x").unwrap_or(s))
        .with_context(|| format!("{s:?} is not hex"))?;
    if b.len() != 32 {
        bail!("{s:?} must be 32 bytes (64 hex characters)");
    }
    Ok(b)
}

/// One `--member ID=RAFT_ADDR=API_ADDR`.
fn parse_member(m: &str) -> Result<pb::InitMember> {
    let parts: Vec<&str> = m.splitn(3, '=').collect();
    let [id, raft, api] = parts[..] else {
        bail!("--member must be ID=RAFT_ADDR=API_ADDR, got {m:?}");
    };
    Ok(pb::InitMember {
        node_id: id
            .parse()
            .with_context(|| format!("bad node id in {m:?}"))?,
        raft_address: raft.into(),
        api_address: api.into(),
    })
}

/// Every `--member`, in order; the first bad one is the error.
fn parse_members(members: &[String]) -> Result<Vec<pb::InitMember>> {
    members.iter().map(|m| parse_member(m)).collect()
}

/// The text of an `--import-master-file`: 128 hex characters (surrounding whitespace ignored).
fn parse_master_secret(text: &str) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    let text = text.trim();
    let secret =
        zeroize::Zeroizing::new(hex::decode(text.strip_prefix("0x").unwrap_or(text)).ok()?);
    (secret.len() == 64).then_some(secret)
}

/// `--consistency`.
fn parse_consistency(s: &str) -> Result<pb::ReadConsistency> {
    match s {
        "linearizable" => Ok(pb::ReadConsistency::Linearizable),
        "stale" => Ok(pb::ReadConsistency::Stale),
        other => bail!("--consistency must be linearizable or stale, got {other:?}"),
    }
}

/// `--scheme` of `dev create-cluster`.
fn parse_scheme(s: &str) -> Result<pb::DerivationScheme> {
    match s {
        "native" => Ok(pb::DerivationScheme::Native),
        "phala" => Ok(pb::DerivationScheme::Phala),
        other => bail!("--scheme must be native or phala, got {other:?}"),
    }
}

/// `--isolate` / `--heal` → whether to isolate; exactly one of them must be given.
fn parse_fault(isolate: bool, heal: bool) -> Result<bool> {
    if isolate == heal {
        bail!("pass exactly one of --isolate or --heal");
    }
    Ok(isolate)
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
            scheme: parse_scheme(&scheme)? as i32,
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
    Ok(pb::ApplyDevEventRequest {
        event: Some(event),
        authorization: None,
    })
}

/// The envelope context of a master secret to import: purpose master-import, gatekeeper id all
/// zero, epoch 0.
fn master_import_context(
    recipient: keyring::X25519PublicKey,
) -> keyring::envelope::EnvelopeContext {
    keyring::envelope::EnvelopeContext {
        purpose: keyring::envelope::Purpose::MasterImport,
        gatekeeper_id: keyring::GatekeeperId([0; 32]),
        epoch: 0,
        subject: keyring::envelope::subject::master_import(),
        recipient,
    }
}

/// Seals a master secret to import to the endpoint node's enclave HPKE key.
fn seal_master_secret(secret: &[u8], enclave_hpke_public_key: &[u8]) -> Result<pb::HpkeEnvelope> {
    let recipient = keyring::X25519PublicKey::from_slice(enclave_hpke_public_key)
        .context("the node did not report its enclave HPKE key")?;
    let env = keyring::envelope::seal(
        &master_import_context(recipient),
        secret,
        &mut rand_core::OsRng,
    )
    .context("sealing the master secret")?;
    Ok(pb::HpkeEnvelope {
        version: env.version,
        encapped_key: env.encapped_key.to_vec(),
        ciphertext: env.ciphertext,
    })
}

// ---------------------------------------------------------------------------------------------
// Responses → output (pure).

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

fn voter_text(voter: bool) -> &'static str {
    if voter {
        "voter"
    } else {
        "learner"
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
        "bootstrap": (c.bootstrap_block != 0).then(|| json!({
            "block": c.bootstrap_block,
            "entries": c.bootstrap_entries,
            "complete": c.bootstrap_complete,
        })),
    })
}

/// `status --json`.
fn status_json(s: &pb::StatusResponse) -> serde_json::Value {
    json!({
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
        "condition": (!s.condition.is_empty()).then(|| s.condition.clone()),
        "rotation": s.rotation.as_ref().map(|r| json!({
            "rotation_id": r.rotation_id,
            "epoch": r.epoch,
            "outcome": r.outcome,
            "reason": r.reason,
            "deadline_ms": r.deadline_ms,
            "acked": r.acked,
            "shares": r.shares,
        })),
        "checkpoint": s.checkpoint.as_ref().map(|c| json!({
            "certified_index": c.certified_index,
            "voters": c.voters,
            "signatures": c.signatures,
            "snapshot_index": c.snapshot_index,
        })),
    })
}

/// `status` without `--json`: the lines to print.
fn status_text(s: &pb::StatusResponse) -> Vec<String> {
    let mut lines = vec![
        format!(
            "node {} ({}), term {}, leader {}",
            s.node_id,
            role_name(s.role),
            s.term,
            s.leader_id
                .map_or_else(|| "unknown".to_string(), |l| l.to_string())
        ),
        format!(
            "log index {}, applied {}, audit sequence {}",
            s.last_log_index, s.last_applied, s.audit_sequence
        ),
    ];
    if !s.condition.is_empty() {
        lines.insert(1, format!("! {}", s.condition));
    }
    lines.extend(s.members.iter().map(|m| {
        format!(
            "  {:>4}  {:<8} raft={} api={}",
            m.node_id,
            voter_text(m.voter),
            m.raft_address,
            m.api_address
        )
    }));
    lines.push(format!("seal: {}", seal_text(&s.seal)));
    lines.extend(s.epochs.iter().map(|e| {
        format!(
            "  epoch {:>3}  {:<8} threshold {} master {}",
            e.epoch,
            epoch_status_name(e.status),
            e.threshold,
            hex::encode(&e.master_public_key)
        )
    }));
    lines.extend(chain_text(s.chain.as_ref()));
    if let Some(r) = &s.rotation {
        lines.push(format!(
            "rotation: {} epoch {} {}{} ({} of {} shares acknowledged)",
            r.rotation_id,
            r.epoch,
            r.outcome.replace('_', " "),
            if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", r.reason)
            },
            r.acked.len(),
            r.shares
        ));
    }
    lines.push(match &s.checkpoint {
        Some(c) => format!(
            "checkpoint: certified at index {} by {} signature(s), voters {:?}; snapshot at \
             index {}",
            c.certified_index, c.signatures, c.voters, c.snapshot_index
        ),
        None => "checkpoint: none certified yet".into(),
    });
    lines
}

/// The chain watcher's part of [`status_text`].
fn chain_text(chain: Option<&pb::ChainStatus>) -> Vec<String> {
    let Some(ch) = chain else {
        return vec!["chain: none configured".into()];
    };
    let mut lines =
        vec![
            format!(
                "chain: {} ({} profile), {}{}",
                ch.url,
                ch.profile,
                if ch.connected {
                    "connected"
                } else {
                    "DISCONNECTED"
                },
                if ch.stalled { ", STALLED" } else { "" }
            ),
            format!(
            "  finalized {}, cursor {} (event {}{}), lag {} blocks; events applied {}, ignored {}",
            ch.finalized,
            ch.cursor_block,
            ch.cursor_event_index,
            if ch.cursor_block_complete { ", complete" } else { "" },
            ch.lag_blocks,
            ch.events_applied,
            ch.events_ignored
        ),
        ];
    if ch.bootstrap_block != 0 {
        lines.push(if ch.bootstrap_complete {
            format!(
                "  started from the storage of block {} ({} entries)",
                ch.bootstrap_block, ch.bootstrap_entries
            )
        } else {
            format!(
                "  BOOTSTRAPPING from the storage of block {}: {} entries applied",
                ch.bootstrap_block, ch.bootstrap_entries
            )
        });
    }
    if !ch.last_error.is_empty() {
        lines.push(format!("  last error: {}", ch.last_error));
    }
    lines.extend(ch.recent_ignored.iter().map(|i| {
        format!(
            "  ignored: block {} event {} {}: {}",
            i.block, i.index, i.name, i.reason
        )
    }));
    lines
}

/// `members --json`.
fn members_response_json(r: &pb::MembersResponse) -> serde_json::Value {
    json!({"leader_id": r.leader_id, "members": members_json(&r.members)})
}

/// `members` without `--json`: one line per member.
fn members_text(r: &pb::MembersResponse) -> Vec<String> {
    r.members
        .iter()
        .map(|m| {
            format!(
                "{} {} raft={} api={}",
                m.node_id,
                voter_text(m.voter),
                m.raft_address,
                m.api_address
            )
        })
        .collect()
}

fn init_json(r: &pb::InitResponse) -> serde_json::Value {
    json!({
        "gatekeeper_id": hex::encode(&r.gatekeeper_id),
        "threshold": r.threshold,
        "imported_master_public_key": hex::encode(&r.master_public_key),
    })
}

fn join_json(r: &pb::JoinResponse) -> serde_json::Value {
    json!({"log_index": r.log_index, "voter": r.voter})
}

fn leave_json(r: &pb::LeaveResponse) -> serde_json::Value {
    json!({"log_index": r.log_index})
}

fn put_json(r: &pb::WriteCanaryResponse) -> serde_json::Value {
    json!({"log_index": r.log_index, "audit_sequence": r.audit_sequence, "leader_id": r.leader_id})
}

fn get_json(r: &pb::ReadCanaryResponse) -> serde_json::Value {
    json!({"value": r.value, "applied_index": r.applied_index, "served_by": r.served_by, "staleness_ms": r.staleness_ms})
}

fn rotate_json(r: &pb::RotateResponse) -> serde_json::Value {
    json!({"rotation_id": r.rotation_id, "epoch": r.epoch})
}

fn retire_json(r: &pb::RetireResponse) -> serde_json::Value {
    json!({"retired": r.retired, "min_epoch": r.min_epoch})
}

fn dev_json(r: &pb::ApplyDevEventResponse) -> serde_json::Value {
    json!({"log_index": r.log_index, "audit_sequence": r.audit_sequence})
}

fn fault_json(r: &pb::SetFaultResponse) -> serde_json::Value {
    json!({"isolated": r.isolated})
}

fn print_lines(lines: &[String]) {
    for l in lines {
        outln!("{l}");
    }
}

// ---------------------------------------------------------------------------------------------
// The subcommands: call AdminService, print the answer.

fn status_error(s: tonic::Status) -> anyhow::Error {
    use std::error::Error as _;
    match s.code() {
        tonic::Code::Unimplemented
            if s.message().is_empty() || s.message().contains("AdminService") =>
        {
            anyhow::anyhow!(
                "{}: {}\nhint: this endpoint does not serve AdminService: use the node's \
                 admin_listen address (default 127.0.0.1 with api_listen's port + 1), not its \
                 key or cluster (Raft) port",
                s.code(),
                s.message()
            )
        }
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal => {
            let detail = match s.source() {
                Some(src) => format!("{}: {}", s.message(), error_chain(src)),
                None => s.message().to_string(),
            };
            anyhow::anyhow!("{}", explain(&format!("{}", s.code()), false, &detail))
        }
        _ => anyhow::anyhow!("{}: {}", s.code(), s.message()),
    }
}

/// Connects to the AdminService at `endpoint` (host:port) as `tls` says; every call gets
/// `timeout`. Errors explain the usual causes (wrong CA, missing or refused certificate,
/// plaintext against TLS, a port that is not the admin listener).
pub async fn connect(
    endpoint: &str,
    tls: &AdminTls,
    timeout: Duration,
) -> Result<AdminServiceClient<tonic::transport::Channel>> {
    let ch = tls
        .endpoint(endpoint)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("{}", explain(endpoint, tls.plaintext, &error_chain(&e))))?;
    Ok(AdminServiceClient::new(ch))
}

/// Runs one admin command against `endpoint`.
pub async fn run(
    endpoint: &str,
    tls: &AdminTls,
    timeout: Duration,
    cmd: AdminCommand,
) -> Result<()> {
    run_command(endpoint, tls, timeout, cmd).await.map_err(|e| {
        // A plaintext client against a TLS node fails in several ways depending on timing
        // (invalid frame size, broken pipe, reset): whichever it is, say what usually causes it.
        let text = format!("{e:#}");
        // (Seen: "transport error", and "operation was canceled" when the node closes the
        // connection while the client's HTTP/2 handshake is still in flight.)
        let connection_failed = text.contains("transport error") || text.contains("was cancel");
        if tls.plaintext && connection_failed && !text.contains("hint:") {
            anyhow::anyhow!(
                "{text}\nhint: if the node uses TLS (the default), drop --plaintext and pass \
                 --ca, --cert and --key"
            )
        } else {
            e
        }
    })
}

async fn run_command(
    endpoint: &str,
    tls: &AdminTls,
    timeout: Duration,
    cmd: AdminCommand,
) -> Result<()> {
    let mut c = connect(endpoint, tls, timeout).await?;
    match cmd {
        AdminCommand::Init {
            members,
            threshold,
            import_master_file,
        } => init(&mut c, &members, threshold, import_master_file.as_deref()).await,
        AdminCommand::Join {
            node_id,
            raft_address,
            api_address,
        } => {
            let authorization = authorize(
                &mut c,
                operator_signer(tls)?.as_ref(),
                &Command::AuthorizeJoin {
                    node_id,
                    raft_address: raft_address.clone(),
                },
            )
            .await?;
            let req = pb::JoinRequest {
                node_id,
                raft_address,
                api_address,
                authorization,
            };
            let r = match c.join(req.clone()).await {
                Err(s) if leader_hint(&s).is_some() => {
                    let mut l = follow_leader(endpoint, &s, tls, timeout).await?;
                    l.join(req).await
                }
                r => r,
            };
            outln!("{}", join_json(&r.map_err(status_error)?.into_inner()));
            Ok(())
        }
        AdminCommand::Leave { node_id } => {
            let authorization = authorize(
                &mut c,
                operator_signer(tls)?.as_ref(),
                &Command::AuthorizeLeave { node_id },
            )
            .await?;
            let req = pb::LeaveRequest {
                node_id,
                authorization,
            };
            let r = match c.leave(req.clone()).await {
                Err(s) if leader_hint(&s).is_some() => {
                    let mut l = follow_leader(endpoint, &s, tls, timeout).await?;
                    l.leave(req).await
                }
                r => r,
            };
            outln!("{}", leave_json(&r.map_err(status_error)?.into_inner()));
            Ok(())
        }
        AdminCommand::Status { json, all: false } => status(&mut c, json).await,
        AdminCommand::Status { json, all: true } => {
            let (entry, members) = ask_members(&mut c, tls, timeout).await?;
            let h = crate::health::cluster_health(&members, newest_threshold(&entry));
            if json {
                outln!("{}", all_members_json(&entry, &members, &h));
            } else {
                print_lines(&all_members_text(&members, &h));
            }
            Ok(())
        }
        AdminCommand::Health {
            cluster: false,
            json,
        } => {
            let s = c
                .status(pb::StatusRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let a = answer(&s);
            let mut problems = Vec::new();
            if a.leader.is_none() {
                problems.push(format!("knows no leader ({})", a.role));
            }
            if !a.unsealed {
                problems.push(seal_text(&s.seal));
            }
            if !s.condition.is_empty() {
                problems.push(s.condition.clone());
            }
            let v = json!({"node_id": s.node_id, "healthy": problems.is_empty(), "role": a.role,
                "leader": a.leader, "seal_status": seal_text(&s.seal), "problems": problems});
            if json {
                outln!("{v}");
            } else {
                outln!(
                    "node {}: {}",
                    s.node_id,
                    if problems.is_empty() {
                        "healthy".to_string()
                    } else {
                        problems.join("; ")
                    }
                );
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(crate::cli::ExitWith::code(1).into())
            }
        }
        AdminCommand::Health {
            cluster: true,
            json,
        } => {
            let (entry, members) = ask_members(&mut c, tls, timeout).await?;
            let h = crate::health::cluster_health(&members, newest_threshold(&entry));
            let verdict = ["healthy", "degraded", "down"][h.exit_code() as usize];
            if json {
                outln!(
                    "{}",
                    json!({
                        "status": verdict,
                        "leader": h.leader,
                        "voters": h.voters,
                        "healthy_voters": h.healthy_voters,
                        "raft_failure_tolerance": h.raft_failure_tolerance,
                        "unsealed_voters": h.unsealed_voters,
                        "threshold": h.threshold,
                        "unseal_failure_tolerance": h.unseal_failure_tolerance,
                        "problems": h.problems,
                    })
                );
            } else {
                outln!(
                    "cluster {verdict}: leader {}, {}/{} voters healthy (failure tolerance {}), {} unsealed for a threshold of {} (unseal failure tolerance {})",
                    h.leader.map_or("none".to_string(), |l| l.to_string()),
                    h.healthy_voters,
                    h.voters,
                    h.raft_failure_tolerance,
                    h.unsealed_voters,
                    h.threshold,
                    h.unseal_failure_tolerance
                );
                for p in &h.problems {
                    outln!("  - {p}");
                }
            }
            match h.exit_code() {
                0 => Ok(()),
                code => Err(crate::cli::ExitWith::code(code).into()),
            }
        }
        AdminCommand::Members { json } => members(&mut c, json).await,
        AdminCommand::Put { key, value } => {
            put(&mut c, operator_signer(tls)?.as_ref(), key, value).await
        }
        AdminCommand::Get { key, consistency } => get(&mut c, key, &consistency).await,
        AdminCommand::Rotate {
            rotation_id,
            deadline_ms,
            reason,
            wait,
        } => {
            let signer = operator_signer(tls)?;
            let r = rotate(&mut c, signer.as_ref(), rotation_id, deadline_ms, reason).await?;
            if wait {
                wait_rotation(&mut c, &r).await
            } else {
                Ok(())
            }
        }
        AdminCommand::Retire { min_epoch } => {
            retire(&mut c, operator_signer(tls)?.as_ref(), min_epoch).await
        }
        AdminCommand::Dev { event } => dev(&mut c, operator_signer(tls)?.as_ref(), event).await,
        AdminCommand::Operators { change } => {
            operators(&mut c, operator_signer(tls)?.as_ref(), change).await
        }
        AdminCommand::Fault { isolate, heal } => fault(&mut c, isolate, heal).await,
        AdminCommand::Snapshot {
            command: SnapshotCommand::Save { file, force },
        } => snapshot_save(&mut c, &file, force).await,
    }
}

/// `snapshot save`: the stream goes to a temporary file beside FILE, checked against the
/// manifest, then renamed over FILE.
async fn snapshot_save(c: &mut Client, file: &Path, force: bool) -> Result<()> {
    use std::io::Write;
    if file.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", file.display());
    }
    let mut stream = c
        .save_snapshot(pb::SaveSnapshotRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(status_error)?
        .context("the node ended the backup stream before its manifest")?;
    let manifest: crate::backup::Manifest = serde_json::from_str(&first.manifest_json)
        .context("the node sent a manifest that does not parse")?;
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".gatekeeper-backup-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    crate::backup::write_manifest(tmp.as_file_mut(), &manifest)?;
    let header_len = tmp.as_file().metadata()?.len();
    tmp.as_file_mut().write_all(&first.data)?;
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        tmp.as_file_mut().write_all(&chunk.data)?;
    }
    tmp.as_file_mut().flush()?;
    // Read back what was written: size and SHA-256 against the manifest.
    {
        use std::io::{Seek, SeekFrom};
        let mut f = tmp.reopen()?;
        f.seek(SeekFrom::Start(header_len))?;
        crate::backup::copy_snapshot(&manifest, &mut f, &mut std::io::sink())
            .context("the backup received does not match its manifest; nothing was written")?;
    }
    tmp.as_file().sync_all()?;
    if force {
        tmp.persist(file)
            .with_context(|| format!("cannot write {}", file.display()))?;
    } else {
        tmp.persist_noclobber(file).with_context(|| {
            format!("cannot write {} (it exists? pass --force)", file.display())
        })?;
    }
    outln!(
        "{}",
        json!({
            "file": file,
            "gatekeeper_id": manifest.gatekeeper_id,
            "index": manifest.index,
            "term": manifest.term,
            "snapshot_bytes": manifest.snapshot_bytes,
            "snapshot_sha256": manifest.snapshot_sha256,
            "source_node": manifest.source_node,
            "members": manifest.members.iter().map(|m| m.node_id).collect::<Vec<_>>(),
        })
    );
    Ok(())
}

/// `init`: reads and seals the master secret to import (if any), then initialises the cluster.
async fn init(
    c: &mut Client,
    members: &[String],
    threshold: u32,
    import_master_file: Option<&Path>,
) -> Result<()> {
    let imported_master_secret = match import_master_file {
        Some(path) => Some(sealed_master_import(c, path).await?),
        None => None,
    };
    let req = pb::InitRequest {
        threshold,
        members: parse_members(members)?,
        imported_master_secret,
        ..Default::default()
    };
    let r = c.init(req).await.map_err(status_error)?.into_inner();
    outln!("{}", init_json(&r));
    Ok(())
}

/// Reads the master secret in `path` and seals it to the endpoint node's enclave.
async fn sealed_master_import(c: &mut Client, path: &Path) -> Result<pb::HpkeEnvelope> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let secret = parse_master_secret(&text)
        .with_context(|| format!("{} must hold 128 hex characters", path.display()))?;
    let s = c
        .status(pb::StatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    seal_master_secret(&secret, &s.enclave_hpke_public_key)
}

/// Whether the CLI may follow a `NOT_LEADER` hint from `endpoint` to `leader`: never to an
/// unspecified address (0.0.0.0, ::), and to a loopback one only from a loopback endpoint (a
/// node on another host that registered its default 127.0.0.1 admin address).
fn check_follow(endpoint: &str, leader: &str) -> Result<()> {
    use gatekeeper_raft::network::host_of;
    let ip = |a: &str| host_of(a).parse::<std::net::IpAddr>().ok();
    match ip(leader) {
        Some(l) if l.is_unspecified() => bail!(
            "the leader registered the admin address {leader}, which is not reachable: set \
             admin_advertise on the nodes"
        ),
        Some(l) if l.is_loopback() && !ip(endpoint).is_some_and(|e| e.is_loopback()) => bail!(
            "the leader registered the loopback admin address {leader}: run the command on the \
             leader's host, or set admin_advertise (and admin_listen) on the nodes"
        ),
        _ => Ok(()),
    }
}

/// Whether a refusal says the call needs the operator's signature.
fn wants_signature(s: &tonic::Status) -> bool {
    s.metadata()
        .get(crate::error::ERROR_CODE_METADATA)
        .and_then(|c| c.to_str().ok())
        == Some(crate::error::ErrorCode::CommandNotAuthorized.as_str())
}

/// The leader's admin address from a follower's `NOT_LEADER` refusal.
fn leader_hint(s: &tonic::Status) -> Option<String> {
    let code = s.metadata().get(crate::error::ERROR_CODE_METADATA)?;
    if code.to_str().ok()? != crate::error::ErrorCode::NotLeader.as_str() {
        return None;
    }
    let addr = s.metadata().get(crate::error::LEADER_ADMIN_METADATA)?;
    Some(addr.to_str().ok()?.to_string())
}

/// Membership calls run on the leader: connect to the one a follower named, with the same TLS
/// settings (the leader authenticates this operator itself; nothing is forwarded).
async fn follow_leader(
    endpoint: &str,
    s: &tonic::Status,
    tls: &AdminTls,
    timeout: Duration,
) -> Result<Client> {
    let addr = leader_hint(s).context("no leader address in the refusal")?;
    check_follow(endpoint, &addr)?;
    eprintln!("note: {}; retrying on the leader at {addr}", s.message());
    let mut tls = tls.clone();
    tls.server_name = None;
    connect(&addr, &tls, timeout).await
}

/// What a member's `Status` answer says about its health.
fn answer(s: &pb::StatusResponse) -> crate::health::MemberAnswer {
    crate::health::MemberAnswer {
        role: role_name(s.role).to_string(),
        leader: s.leader_id,
        term: s.term,
        applied: s.last_applied,
        unsealed: s
            .seal
            .as_ref()
            .is_some_and(|x| x.state == pb::SealState::Unsealed as i32),
    }
}

/// The threshold of the newest active epoch in `s` (0 when none).
fn newest_threshold(s: &pb::StatusResponse) -> u8 {
    s.epochs
        .iter()
        .filter(|e| e.status == pb::EpochStatus::Active as i32)
        .max_by_key(|e| e.epoch)
        .map_or(0, |e| e.threshold.min(255) as u8)
}

/// Asks the node behind `c` for the members, then every member (at its registered admin
/// address, concurrently, each within `timeout` or 5 s) for its own status.
async fn ask_members(
    c: &mut Client,
    tls: &AdminTls,
    timeout: Duration,
) -> Result<(pb::StatusResponse, Vec<crate::health::MemberHealth>)> {
    let entry = c
        .status(pb::StatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let per_member = timeout.min(Duration::from_secs(5));
    let asks = entry.members.iter().map(|m| {
        let entry = &entry;
        async move {
            let result: Result<pb::StatusResponse, String> = if m.node_id == entry.node_id {
                Ok(entry.clone())
            } else if m.admin_address.is_empty() {
                Err("no admin address registered".into())
            } else {
                let mut tls = tls.clone();
                tls.server_name = None;
                match connect(&m.admin_address, &tls, per_member).await {
                    Err(e) => Err(format!("{}: {e:#}", m.admin_address)),
                    Ok(mut mc) => match mc.status(pb::StatusRequest {}).await {
                        Err(s) => Err(format!("{}: {}", m.admin_address, s.message())),
                        // Another node answered there (a loopback address asked from another
                        // host, say): its view is not this member's.
                        Ok(r) if r.get_ref().node_id != m.node_id => Err(format!(
                            "{} answered as node {}: the registered admin address is not \
                             reachable as this member from here",
                            m.admin_address,
                            r.get_ref().node_id
                        )),
                        Ok(r) => Ok(r.into_inner()),
                    },
                }
            };
            crate::health::MemberHealth {
                id: m.node_id,
                voter: m.voter,
                view: result.as_ref().ok().map(answer),
                error: result.err(),
            }
        }
    });
    let members = futures::future::join_all(asks).await;
    Ok((entry, members))
}

fn all_members_json(
    entry: &pb::StatusResponse,
    members: &[crate::health::MemberHealth],
    h: &crate::health::ClusterHealth,
) -> serde_json::Value {
    let addr = |id: u64| {
        entry
            .members
            .iter()
            .find(|m| m.node_id == id)
            .map(|m| m.admin_address.clone())
            .unwrap_or_default()
    };
    json!({
        "asked": entry.node_id,
        "agreed_leader": h.leader,
        "members": members.iter().map(|m| json!({
            "node_id": m.id,
            "voter": m.voter,
            "admin_address": addr(m.id),
            "reachable": m.view.is_some(),
            "role": m.view.as_ref().map(|v| v.role.clone()),
            "leader": m.view.as_ref().and_then(|v| v.leader),
            "term": m.view.as_ref().map(|v| v.term),
            "applied": m.view.as_ref().map(|v| v.applied),
            "unsealed": m.view.as_ref().map(|v| v.unsealed),
            "error": m.error,
        })).collect::<Vec<_>>(),
        "problems": h.problems,
    })
}

fn all_members_text(
    members: &[crate::health::MemberHealth],
    h: &crate::health::ClusterHealth,
) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<6} {:<6} {:<13} {:<8} {:<6} {:<10} {}",
        "member", "voter", "role", "leader", "term", "applied", "seal"
    )];
    for m in members {
        lines.push(match &m.view {
            Some(v) => format!(
                "{:<6} {:<6} {:<13} {:<8} {:<6} {:<10} {}",
                m.id,
                if m.voter { "yes" } else { "no" },
                v.role,
                v.leader.map_or("unknown".to_string(), |l| l.to_string()),
                v.term,
                v.applied,
                if v.unsealed { "unsealed" } else { "sealed" }
            ),
            None => format!(
                "{:<6} {:<6} unreachable: {}",
                m.id,
                if m.voter { "yes" } else { "no" },
                m.error.as_deref().unwrap_or("?")
            ),
        });
    }
    if h.problems.is_empty() {
        lines.push("every member agrees on the leader and is unsealed".into());
    } else {
        lines.extend(h.problems.iter().map(|p| format!("! {p}")));
    }
    lines
}

async fn status(c: &mut Client, as_json: bool) -> Result<()> {
    let req = pb::StatusRequest {};
    let s = c.status(req).await.map_err(status_error)?.into_inner();
    if as_json {
        outln!("{}", status_json(&s));
    } else {
        print_lines(&status_text(&s));
    }
    Ok(())
}

async fn members(c: &mut Client, as_json: bool) -> Result<()> {
    let req = pb::MembersRequest {};
    let r = c.members(req).await.map_err(status_error)?.into_inner();
    if as_json {
        outln!("{}", members_response_json(&r));
    } else {
        print_lines(&members_text(&r));
    }
    Ok(())
}

/// A canary write: unsigned first (a development cluster takes the node's word for the operator
/// it authenticated), signed when the cluster wants the operator's signature (production).
async fn put(
    c: &mut Client,
    signer: Option<&OperatorSigner>,
    key: String,
    value: String,
) -> Result<()> {
    let mut req = pb::WriteCanaryRequest {
        key,
        value,
        authorization: None,
    };
    let r = match c.write_canary(req.clone()).await {
        Ok(r) => r,
        Err(s) if signer.is_some() && wants_signature(&s) => {
            let command = Command::Put {
                key: req.key.clone(),
                value: req.value.clone(),
            };
            req.authorization = authorize(c, signer, &command).await?;
            c.write_canary(req).await.map_err(status_error)?
        }
        Err(s) => return Err(status_error(s)),
    }
    .into_inner();
    outln!("{}", put_json(&r));
    Ok(())
}

async fn get(c: &mut Client, key: String, consistency: &str) -> Result<()> {
    let req = pb::ReadCanaryRequest {
        key,
        consistency: parse_consistency(consistency)? as i32,
    };
    let r = c.read_canary(req).await.map_err(status_error)?.into_inner();
    outln!("{}", get_json(&r));
    Ok(())
}

/// The operator's signer when the CLI holds an operator certificate and key (TLS); none in
/// plaintext (a development cluster without registered operators).
fn operator_signer(tls: &AdminTls) -> Result<Option<OperatorSigner>> {
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) if !tls.plaintext => {
            OperatorSigner::from_files(cert, key).map(Some)
        }
        _ => Ok(None),
    }
}

/// Signs `command` for the cluster `c` belongs to (its id from `Status`).
async fn authorize(
    c: &mut Client,
    signer: Option<&OperatorSigner>,
    command: &Command,
) -> Result<Option<pb::OperatorAuthorization>> {
    let Some(signer) = signer else {
        return Ok(None);
    };
    let st = c
        .status(pb::StatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let gk: [u8; 32] = st
        .gatekeeper_id
        .as_slice()
        .try_into()
        .context("the node reports no cluster id: is the cluster initialised?")?;
    Ok(Some(signer.authorize(
        &Bytes32(gk),
        crate::cli::sign::operator_sequence(),
        command,
    )))
}

async fn rotate(
    c: &mut Client,
    signer: Option<&OperatorSigner>,
    rotation_id: String,
    deadline_ms: u64,
    reason: String,
) -> Result<pb::RotateResponse> {
    let mut req = pb::RotateRequest {
        rotation_id,
        deadline_ms,
        reason,
        authorization: None,
    };
    let command = crate::operator::rotation(
        &req,
        crate::config::DEFAULT_ROTATION_DEADLINE_MS,
        crate::clock::now_ms(),
        || {
            let mut b = [0u8; 8];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
            format!("admin-{}", hex::encode(b))
        },
    );
    req.authorization = authorize(c, signer, &command).await?;
    let r = c.rotate(req).await.map_err(status_error)?.into_inner();
    outln!("{}", rotate_json(&r));
    Ok(r)
}

/// `rotate --wait`: follows the rotation in this node's status until it ends (the node's
/// applied state: a follower sees the outcome once it applied it). A node that cannot be asked
/// for a while is asked again; progress lines go to stderr when they change.
async fn wait_rotation(c: &mut Client, started: &pb::RotateResponse) -> Result<()> {
    let mut last = String::new();
    let mut failures = 0;
    // The leader aborts a rotation at its deadline; without a leader nobody does. Give up a
    // while after the deadline instead of waiting forever.
    let mut give_up: Option<u64> = None;
    loop {
        match c.status(pb::StatusRequest {}).await {
            Err(e) => {
                failures += 1;
                if failures >= 30 {
                    return Err(status_error(e).context("the node stopped answering while waiting"));
                }
            }
            Ok(s) => {
                failures = 0;
                let s = s.into_inner();
                let Some(r) = s.rotation.filter(|r| r.rotation_id == started.rotation_id) else {
                    // Another rotation replaced it: its epoch's status tells how it ended.
                    let status = s
                        .epochs
                        .iter()
                        .find(|e| e.epoch == started.epoch)
                        .map(|e| epoch_status_name(e.status));
                    match status {
                        Some("active") | Some("retired") => {
                            outln!("{}", json!({"rotation_id": started.rotation_id, "epoch": started.epoch, "outcome": "completed"}));
                            return Ok(());
                        }
                        Some("aborted") => {
                            return Err(crate::cli::ExitWith {
                                code: 1,
                                message: format!(
                                    "rotation {} aborted (another rotation followed it; its reason is in the nodes' logs)",
                                    started.rotation_id
                                ),
                            }
                            .into())
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    }
                };
                let deadline = *give_up.get_or_insert(r.deadline_ms.saturating_add(30_000));
                if r.outcome == "in_progress" && crate::clock::now_ms() > deadline {
                    return Err(crate::cli::ExitWith {
                        code: 2,
                        message: format!(
                            "rotation {} is still in progress 30 s after its deadline: no leader has aborted it (check `admin health --cluster`)",
                            r.rotation_id
                        ),
                    }
                    .into());
                }
                let line = format!(
                    "rotation {}: epoch {} {} ({} of {} shares acknowledged)",
                    r.rotation_id,
                    r.epoch,
                    r.outcome.replace('_', " "),
                    r.acked.len(),
                    r.shares
                );
                if line != last {
                    eprintln!("{line}");
                    last = line;
                }
                match r.outcome.as_str() {
                    "completed" => {
                        outln!(
                            "{}",
                            json!({"rotation_id": r.rotation_id, "epoch": r.epoch, "outcome": "completed"})
                        );
                        return Ok(());
                    }
                    "aborted" => {
                        outln!(
                            "{}",
                            json!({"rotation_id": r.rotation_id, "epoch": r.epoch, "outcome": "aborted", "reason": r.reason})
                        );
                        return Err(crate::cli::ExitWith {
                            code: 1,
                            message: format!("rotation {} aborted: {}", r.rotation_id, r.reason),
                        }
                        .into());
                    }
                    _ => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn operators(
    c: &mut Client,
    signer: Option<&OperatorSigner>,
    change: OperatorChange,
) -> Result<()> {
    let r = match change {
        OperatorChange::Add { cert_file } => {
            let certs = crate::tls::pem::load_certs(&cert_file)
                .with_context(|| format!("{}", cert_file.display()))?;
            let leaf = certs
                .first()
                .with_context(|| format!("{} holds no certificate", cert_file.display()))?;
            let info = crate::tls::CertInfo::parse(leaf).map_err(|e| anyhow::anyhow!(e))?;
            let name = info
                .common_name
                .with_context(|| format!("{} has no common name", cert_file.display()))?;
            let public_key = crate::tls::cert::p256_public_key(leaf)
                .map_err(|e| anyhow::anyhow!("{}: {e}", cert_file.display()))?;
            let command = Command::AddOperator(gatekeeper_raft::state::OperatorKey {
                name: name.clone(),
                public_key: gatekeeper_raft::state::HexBytes(public_key.clone()),
            });
            let authorization = authorize(c, signer, &command).await?;
            c.add_operator(pb::AddOperatorRequest {
                name,
                public_key,
                authorization,
            })
            .await
        }
        OperatorChange::Remove { name } => {
            let command = Command::RemoveOperator { name: name.clone() };
            let authorization = authorize(c, signer, &command).await?;
            c.remove_operator(pb::RemoveOperatorRequest {
                name,
                authorization,
            })
            .await
        }
    }
    .map_err(status_error)?
    .into_inner();
    outln!(
        "{}",
        json!({"log_index": r.log_index, "operators": r.operators})
    );
    Ok(())
}

async fn retire(c: &mut Client, signer: Option<&OperatorSigner>, min_epoch: u64) -> Result<()> {
    let authorization = authorize(c, signer, &Command::SetMinEpoch { min_epoch }).await?;
    let req = pb::RetireRequest {
        min_epoch,
        authorization,
    };
    let r = c.retire(req).await.map_err(status_error)?.into_inner();
    outln!("{}", retire_json(&r));
    Ok(())
}

async fn dev(c: &mut Client, signer: Option<&OperatorSigner>, event: DevEvent) -> Result<()> {
    let mut req = dev_request(event)?;
    let command = Command::DevEvent {
        event: crate::operator::dev_event(req.clone())
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?,
    };
    req.authorization = authorize(c, signer, &command).await?;
    let r = c
        .apply_dev_event(req)
        .await
        .map_err(status_error)?
        .into_inner();
    outln!("{}", dev_json(&r));
    Ok(())
}

async fn fault(c: &mut Client, isolate: bool, heal: bool) -> Result<()> {
    let req = pb::SetFaultRequest {
        isolate: parse_fault(isolate, heal)?,
    };
    let r = c.set_fault(req).await.map_err(status_error)?.into_inner();
    outln!("{}", fault_json(&r));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_take_hex_with_or_without_0x() {
        let bare = "11".repeat(32);
        assert_eq!(hexid(&bare).unwrap(), vec![0x11; 32]);
        assert_eq!(hexid(&format!("0x{bare}")).unwrap(), vec![0x11; 32]);
        assert!(hexid("0x1234").is_err());
        assert!(hexid("zz").is_err());
        let secret = "ab".repeat(64);
        assert_eq!(
            parse_master_secret(&format!(" 0x{secret}\n"))
                .unwrap()
                .len(),
            64
        );
    }

    #[test]
    fn the_cli_follows_only_reachable_leader_addresses() {
        check_follow("127.0.0.1:9985", "127.0.0.1:9986").unwrap();
        check_follow("10.0.0.1:8102", "10.0.0.2:8102").unwrap();
        check_follow("gk1.example:8102", "gk2.example:8102").unwrap();
        let e = check_follow("10.0.0.1:8102", "127.0.0.1:8102").unwrap_err();
        assert!(e.to_string().contains("admin_advertise"), "{e}");
        assert!(check_follow("127.0.0.1:1", "0.0.0.0:8102").is_err());
        assert!(check_follow("[::1]:1", "[::]:8102").is_err());
    }

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        format!("{:#}", r.expect_err("an error"))
    }

    #[test]
    fn a_member_is_id_raft_api() {
        let m = parse_member("3=10.0.0.3:7000=10.0.0.3:8000").unwrap();
        assert_eq!(m.node_id, 3);
        assert_eq!(m.raft_address, "10.0.0.3:7000");
        assert_eq!(m.api_address, "10.0.0.3:8000");
        // Only the first two '=' separate: the API address keeps the rest.
        let m = parse_member("1=r=a=b").unwrap();
        assert_eq!(
            (m.raft_address.as_str(), m.api_address.as_str()),
            ("r", "a=b")
        );
    }

    #[test]
    fn bad_members_are_refused_with_the_offending_argument() {
        assert_eq!(
            err(parse_member("1=10.0.0.1:7000")),
            r#"--member must be ID=RAFT_ADDR=API_ADDR, got "1=10.0.0.1:7000""#
        );
        assert_eq!(
            err(parse_member("")),
            r#"--member must be ID=RAFT_ADDR=API_ADDR, got """#
        );
        assert_eq!(
            err(parse_member("one=r=a")),
            r#"bad node id in "one=r=a": invalid digit found in string"#
        );
        assert_eq!(
            err(parse_member("-1=r=a")),
            r#"bad node id in "-1=r=a": invalid digit found in string"#
        );
        // The first bad one of several is the error; good ones keep their order.
        let ms = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            err(parse_members(&ms(&["1=r=a", "x=r=a", "y"]))),
            r#"bad node id in "x=r=a": invalid digit found in string"#
        );
        let ok = parse_members(&ms(&["2=r2=a2", "1=r1=a1"])).unwrap();
        assert_eq!(ok.iter().map(|m| m.node_id).collect::<Vec<_>>(), [2, 1]);
        assert!(parse_members(&[]).unwrap().is_empty());
    }

    #[test]
    fn hex_ids_are_32_bytes() {
        assert_eq!(hexid(&"ab".repeat(32)).unwrap(), vec![0xab; 32]);
        assert_eq!(
            err(hexid("abcd")),
            r#""abcd" must be 32 bytes (64 hex characters)"#
        );
        assert_eq!(
            err(hexid("zz")),
            r#""zz" is not hex: Invalid character 'z' at position 0"#
        );
    }

    #[test]
    fn a_master_secret_file_holds_128_hex_characters() {
        let hex128 = "0f".repeat(64);
        assert_eq!(
            parse_master_secret(&format!("  {hex128}\n"))
                .unwrap()
                .as_slice(),
            &[0x0f; 64][..]
        );
        assert!(parse_master_secret(&"0f".repeat(63)).is_none());
        assert!(parse_master_secret(&"0f".repeat(65)).is_none());
        assert!(parse_master_secret(&format!("{}zz", "0f".repeat(63))).is_none());
        assert!(parse_master_secret("").is_none());
    }

    #[test]
    fn the_sealed_master_secret_opens_in_the_master_import_context() {
        let sk = keyring::X25519SecretKey::generate(&mut rand_core::OsRng);
        let secret = [7u8; 64];
        let env = seal_master_secret(&secret, &sk.public_key().0).unwrap();
        let opened = keyring::envelope::open(
            &master_import_context(sk.public_key()),
            &sk,
            &keyring::envelope::Envelope {
                version: env.version,
                encapped_key: env.encapped_key.try_into().unwrap(),
                ciphertext: env.ciphertext,
            },
        )
        .unwrap();
        assert_eq!(opened.as_slice(), &secret[..]);
        assert!(err(seal_master_secret(&secret, &[]))
            .starts_with("the node did not report its enclave HPKE key"));
    }

    #[test]
    fn consistency_scheme_and_fault_flags() {
        assert_eq!(
            parse_consistency("linearizable").unwrap(),
            pb::ReadConsistency::Linearizable
        );
        assert_eq!(
            parse_consistency("stale").unwrap(),
            pb::ReadConsistency::Stale
        );
        assert_eq!(
            err(parse_consistency("Stale")),
            r#"--consistency must be linearizable or stale, got "Stale""#
        );
        assert_eq!(
            parse_scheme("native").unwrap(),
            pb::DerivationScheme::Native
        );
        assert_eq!(parse_scheme("phala").unwrap(), pb::DerivationScheme::Phala);
        assert_eq!(
            err(parse_scheme("x")),
            r#"--scheme must be native or phala, got "x""#
        );
        assert!(parse_fault(true, false).unwrap());
        assert!(!parse_fault(false, true).unwrap());
        for (i, h) in [(true, true), (false, false)] {
            assert_eq!(
                err(parse_fault(i, h)),
                "pass exactly one of --isolate or --heal"
            );
        }
    }

    #[test]
    fn create_cluster_becomes_a_request() {
        use pb::apply_dev_event_request::Event as E;
        let (w, c) = ("11".repeat(32), "22".repeat(32));
        let r = dev_request(DevEvent::CreateCluster {
            cluster: c,
            workers: vec![w.clone(), w],
            scheme: "phala".into(),
        })
        .unwrap();
        let Some(E::ClusterCreated(cc)) = r.event else {
            panic!("{r:?}")
        };
        assert_eq!(cc.cluster, vec![0x22; 32]);
        assert_eq!(cc.workers, vec![vec![0x11; 32]; 2]);
        assert_eq!(cc.scheme, pb::DerivationScheme::Phala as i32);
    }

    #[test]
    fn dev_events_other_than_create_cluster() {
        use pb::apply_dev_event_request::Event as E;
        let (w, c) = ("11".repeat(32), "22".repeat(32));
        let r = dev_request(DevEvent::RegisterWorker {
            worker: w.clone(),
            provider: "dcap".into(),
            confidence: 2,
        })
        .unwrap();
        let Some(E::WorkerRegistered(wr)) = r.event else {
            panic!("{r:?}")
        };
        assert_eq!(
            (
                wr.worker,
                wr.attestation_provider.as_str(),
                wr.confidence_level
            ),
            (vec![0x11; 32], "dcap", 2)
        );

        let r = dev_request(DevEvent::Instantiate {
            contract: w,
            cluster: c,
        })
        .unwrap();
        assert!(matches!(r.event, Some(E::ContractInstantiated(_))));
        assert_eq!(
            err(dev_request(DevEvent::Slash {
                worker: "abc".into(),
                reason: "dev".into(),
            })),
            r#""abc" is not hex: Odd number of digits"#
        );
    }

    #[test]
    fn create_cluster_checks_its_arguments_in_order() {
        let (w, c) = ("11".repeat(32), "22".repeat(32));
        // The cluster id is checked before the workers, the workers before the scheme.
        let bad = |cluster: &str, worker: &str, scheme: &str| {
            err(dev_request(DevEvent::CreateCluster {
                cluster: cluster.into(),
                workers: vec![worker.into()],
                scheme: scheme.into(),
            }))
        };
        assert_eq!(
            bad("00", "zz", "x"),
            r#""00" must be 32 bytes (64 hex characters)"#
        );
        assert_eq!(
            bad(&c, "0a", "x"),
            r#""0a" must be 32 bytes (64 hex characters)"#
        );
        assert_eq!(
            bad(&c, &w, "x"),
            r#"--scheme must be native or phala, got "x""#
        );
    }

    fn member(id: u64, voter: bool) -> pb::Member {
        pb::Member {
            node_id: id,
            raft_address: format!("127.0.0.1:70{id:02}"),
            api_address: format!("127.0.0.1:80{id:02}"),
            voter,
            ..Default::default()
        }
    }

    /// A two-member cluster, unsealed, one active epoch, following a chain.
    fn sample_status() -> pb::StatusResponse {
        pb::StatusResponse {
            node_id: 1,
            role: pb::Role::Leader as i32,
            leader_id: Some(1),
            term: 4,
            last_log_index: 20,
            last_applied: 19,
            commit_index: 20,
            members: vec![member(1, true), member(12, false)],
            seal: Some(pb::SealStatus {
                state: pb::SealState::Unsealed as i32,
                ..Default::default()
            }),
            epochs: vec![pb::EpochInfo {
                epoch: 1,
                status: pb::EpochStatus::Active as i32,
                master_public_key: vec![0xaa; 2],
                cluster_signing_public_key: vec![0xbb; 2],
                threshold: 2,
                ..Default::default()
            }],
            gatekeeper_id: vec![0x01, 0x02],
            chain: Some(pb::ChainStatus {
                url: "ws://127.0.0.1:9944".into(),
                connected: true,
                finalized: 12,
                cursor_block: 11,
                cursor_block_hash: vec![0xcc],
                cursor_event_index: 3,
                lag_blocks: 1,
                profile: "gatekeeper".into(),
                stalled: false,
                last_finalized_age_ms: 250,
                last_error: String::new(),
                events_applied: 5,
                events_ignored: 1,
                recent_ignored: vec![pb::IgnoredChainEvent {
                    block: 9,
                    index: 2,
                    name: "Foo.Bar".into(),
                    reason: "undecodable".into(),
                }],
                cursor_block_complete: true,
                genesis_hash: vec![0xdd],
                reconnects: 2,
                bootstrap_block: 7,
                bootstrap_entries: 40,
                bootstrap_complete: true,
            }),
            audit_sequence: 17,
            ..Default::default()
        }
    }

    #[test]
    fn status_json_has_every_field() {
        assert_eq!(
            status_json(&sample_status()),
            json!({
                "node_id": 1,
                "role": "leader",
                "leader_id": 1,
                "term": 4,
                "last_log_index": 20,
                "last_applied": 19,
                "commit_index": 20,
                "members": [
                    {"id": 1, "raft_address": "127.0.0.1:7001",
                     "api_address": "127.0.0.1:8001", "voter": true},
                    {"id": 12, "raft_address": "127.0.0.1:7012",
                     "api_address": "127.0.0.1:8012", "voter": false},
                ],
                "audit_sequence": 17,
                "gatekeeper_id": "0102",
                "seal_status": "unsealed",
                "epochs": [{
                    "epoch": 1, "status": "active", "threshold": 2,
                    "master_public_key": "aaaa", "cluster_signing_public_key": "bbbb",
                }],
                "chain": {
                    "url": "ws://127.0.0.1:9944",
                    "profile": "gatekeeper",
                    "connected": true,
                    "stalled": false,
                    "finalized": 12,
                    "last_finalized_age_ms": 250,
                    "cursor": {"block": 11, "block_hash": "cc", "event_index": 3,
                               "block_complete": true},
                    "lag_blocks": 1,
                    "genesis_hash": "dd",
                    "events_applied": 5,
                    "events_ignored": 1,
                    "recent_ignored": [
                        {"block": 9, "index": 2, "name": "Foo.Bar", "reason": "undecodable"},
                    ],
                    "last_error": "",
                    "reconnects": 2,
                    "bootstrap": {"block": 7, "entries": 40, "complete": true},
                },
                "condition": null,
                "rotation": null,
                "checkpoint": null,
            })
        );
    }

    #[test]
    fn status_json_of_an_uninitialised_node() {
        let v = status_json(&pb::StatusResponse {
            role: pb::Role::Uninitialized as i32,
            ..Default::default()
        });
        assert_eq!(v["role"], "uninitialized");
        assert_eq!(v["leader_id"], serde_json::Value::Null);
        assert_eq!(v["seal_status"], "sealed");
        assert_eq!(v["gatekeeper_id"], "");
        assert_eq!(v["members"], json!([]));
        assert_eq!(v["epochs"], json!([]));
        assert_eq!(v["chain"], serde_json::Value::Null);
    }

    #[test]
    fn status_text_lines() {
        assert_eq!(
            status_text(&sample_status()),
            [
                "node 1 (leader), term 4, leader 1",
                "log index 20, applied 19, audit sequence 17",
                "     1  voter    raft=127.0.0.1:7001 api=127.0.0.1:8001",
                "    12  learner  raft=127.0.0.1:7012 api=127.0.0.1:8012",
                "seal: unsealed",
                "  epoch   1  active   threshold 2 master aaaa",
                "chain: ws://127.0.0.1:9944 (gatekeeper profile), connected",
                "  finalized 12, cursor 11 (event 3, complete), lag 1 blocks; events applied 5, ignored 1",
                "  started from the storage of block 7 (40 entries)",
                "  ignored: block 9 event 2 Foo.Bar: undecodable",
                "checkpoint: none certified yet",
            ]
        );
        let mut s = sample_status();
        s.checkpoint = Some(pb::CheckpointStatus {
            certified_index: 40,
            voters: vec![1, 2, 3],
            signatures: 2,
            snapshot_index: 40,
        });
        assert_eq!(
            status_text(&s).last().unwrap(),
            "checkpoint: certified at index 40 by 2 signature(s), voters [1, 2, 3]; snapshot at \
             index 40"
        );
        assert_eq!(
            status_json(&s)["checkpoint"],
            json!({"certified_index": 40, "voters": [1, 2, 3], "signatures": 2,
                   "snapshot_index": 40})
        );
    }

    #[test]
    fn status_text_of_a_sealing_node_without_a_leader_or_a_chain() {
        let s = pb::StatusResponse {
            node_id: 2,
            role: pb::Role::Follower as i32,
            seal: Some(pb::SealStatus {
                state: pb::SealState::Unsealing as i32,
                shares_collected: 1,
                threshold: 3,
                epoch: 1,
            }),
            ..Default::default()
        };
        assert_eq!(
            status_text(&s),
            [
                "node 2 (follower), term 0, leader unknown",
                "log index 0, applied 0, audit sequence 0",
                "seal: unsealing 1/3",
                "chain: none configured",
                "checkpoint: none certified yet",
            ]
        );
    }

    #[test]
    fn chain_text_flags_trouble() {
        let ch = pb::ChainStatus {
            url: "ws://x".into(),
            profile: "phala".into(),
            connected: false,
            stalled: true,
            last_error: "connection refused".into(),
            ..Default::default()
        };
        assert_eq!(
            chain_text(Some(&ch)),
            [
                "chain: ws://x (phala profile), DISCONNECTED, STALLED",
                "  finalized 0, cursor 0 (event 0), lag 0 blocks; events applied 0, ignored 0",
                "  last error: connection refused",
            ]
        );
    }

    #[test]
    fn seal_role_and_epoch_names() {
        assert_eq!(seal_text(&None), "sealed");
        let seal = |state: pb::SealState| {
            seal_text(&Some(pb::SealStatus {
                state: state as i32,
                shares_collected: 2,
                threshold: 3,
                epoch: 0,
            }))
        };
        assert_eq!(seal(pb::SealState::Unspecified), "sealed");
        assert_eq!(seal(pb::SealState::Sealed), "sealed");
        assert_eq!(seal(pb::SealState::Unsealing), "unsealing 2/3");
        assert_eq!(seal(pb::SealState::Unsealed), "unsealed");
        assert_eq!(role_name(pb::Role::Candidate as i32), "candidate");
        assert_eq!(role_name(pb::Role::Learner as i32), "learner");
        assert_eq!(role_name(99), "unknown");
        assert_eq!(
            epoch_status_name(pb::EpochStatus::Dealing as i32),
            "dealing"
        );
        assert_eq!(
            epoch_status_name(pb::EpochStatus::Retired as i32),
            "retired"
        );
        assert_eq!(
            epoch_status_name(pb::EpochStatus::Aborted as i32),
            "aborted"
        );
        assert_eq!(epoch_status_name(99), "unknown");
    }

    #[test]
    fn members_output() {
        let r = pb::MembersResponse {
            members: vec![member(1, true), member(2, false)],
            leader_id: None,
        };
        assert_eq!(
            members_text(&r),
            [
                "1 voter raft=127.0.0.1:7001 api=127.0.0.1:8001",
                "2 learner raft=127.0.0.1:7002 api=127.0.0.1:8002",
            ]
        );
        assert_eq!(
            members_response_json(&r),
            json!({"leader_id": null, "members": [
                {"id": 1, "raft_address": "127.0.0.1:7001", "api_address": "127.0.0.1:8001",
                 "voter": true},
                {"id": 2, "raft_address": "127.0.0.1:7002", "api_address": "127.0.0.1:8002",
                 "voter": false},
            ]})
        );
        // No members: nothing at all is printed.
        assert!(members_text(&pb::MembersResponse::default()).is_empty());
    }

    #[test]
    fn the_one_line_answers_of_membership() {
        let init = pb::InitResponse {
            gatekeeper_id: vec![0xab],
            epoch: 1,
            master_public_key: vec![0xcd],
            threshold: 2,
        };
        assert_eq!(
            init_json(&init),
            json!({"gatekeeper_id": "ab", "threshold": 2, "imported_master_public_key": "cd"})
        );
        let join = pb::JoinResponse {
            log_index: 7,
            voter: true,
        };
        assert_eq!(join_json(&join), json!({"log_index": 7, "voter": true}));
        assert_eq!(
            leave_json(&pb::LeaveResponse { log_index: 8 }),
            json!({"log_index": 8})
        );
    }

    #[test]
    fn the_one_line_answers_of_canaries_epochs_and_faults() {
        let put = pb::WriteCanaryResponse {
            log_index: 9,
            audit_sequence: 3,
            leader_id: 2,
        };
        assert_eq!(
            put_json(&put),
            json!({"log_index": 9, "audit_sequence": 3, "leader_id": 2})
        );
        let get = pb::ReadCanaryResponse {
            value: None,
            applied_index: 9,
            served_by: 1,
            staleness_ms: 0,
        };
        assert_eq!(
            get_json(&get),
            json!({"value": null, "applied_index": 9, "served_by": 1, "staleness_ms": 0})
        );
        let rotate = pb::RotateResponse {
            rotation_id: "r-1".into(),
            epoch: 2,
            ..Default::default()
        };
        assert_eq!(
            rotate_json(&rotate),
            json!({"rotation_id": "r-1", "epoch": 2})
        );
        let retire = pb::RetireResponse {
            retired: vec![1, 2],
            min_epoch: 3,
        };
        assert_eq!(
            retire_json(&retire),
            json!({"retired": [1, 2], "min_epoch": 3})
        );
        let dev = pb::ApplyDevEventResponse {
            log_index: 4,
            audit_sequence: 5,
        };
        assert_eq!(dev_json(&dev), json!({"log_index": 4, "audit_sequence": 5}));
        assert_eq!(
            fault_json(&pb::SetFaultResponse { isolated: true }),
            json!({"isolated": true})
        );
    }
}
