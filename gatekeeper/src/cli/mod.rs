//! The subcommands of the `gatekeeper` binary, other than `node` (which is [`crate::node`]).
//!
//! * [`admin`] — operate a cluster over AdminService.
//! * [`miner`] — a worker's key fetching through the client SDK.
//! * [`devnet`] — a local network: dev chain, nodes, a demo worker and miner (README.md).
//! * [`keygen`] — make an sr25519 key file.
//! * [`health`] — is a node ready (or alive)? Exit code 0/1.
//! * [`certs`] — make TLS certificates: a CA, node and operator certificates, the miners' CA
//!   bundle, a whole development cluster's set.
//! * `audit verify` — check an audit log's hash chain ([`crate::audit::verify`]).
//!
//! Command output goes through [`out`] (`outln!`): a closed stdout (`admin status | head`) ends
//! the command quietly instead of panicking as `println!` does.

/// `println!` for command output, through [`out`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!($($arg)*))
    };
}

/// Writes one line of a command's output to stdout. When the reader went away (a closed pipe)
/// the process exits 0 at once: the reader has what it wanted. Any other write error exits 1
/// with a message on stderr.
pub fn out(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|_| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

pub mod admin;
pub mod certs;
pub mod devnet;
pub mod health;
pub mod keygen;
pub mod miner;
pub mod sign;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The command line of the `gatekeeper` binary.
#[derive(Parser, Debug)]
#[command(
    name = "gatekeeper",
    version,
    about = "Gatekeeper: a replicated key manager for confidential-compute networks"
)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a gatekeeper node. Every config key can also be set as GATEKEEPER_<KEY>.
    Node {
        /// TOML configuration file (optional when everything comes from the environment).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Operate a cluster through a node's AdminService.
    Admin {
        /// host:port of a node's admin listener (`admin_listen`).
        #[arg(long, env = "GATEKEEPER_ENDPOINT")]
        endpoint: String,
        /// TLS settings.
        #[command(flatten)]
        tls: admin::AdminTls,
        /// Per-call deadline in seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
        /// The admin command.
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// Check a node's health: ready (unsealed, can serve keys) over grpc.health.v1 on the key
    /// listener (--endpoint) or /readyz on the metrics listener (--http; --live asks /livez).
    /// Exit code 0 when healthy, 1 otherwise; one JSON line.
    Health(health::HealthArgs),
    /// A worker's commands (key fetching through the client SDK).
    Miner {
        /// The miner command.
        #[command(subcommand)]
        command: miner::MinerCommand,
    },
    /// Run a local devnet: the dev chain, gatekeeper nodes as separate processes, a demo
    /// worker registered on chain and a demo miner fetching its keys. Runs until Ctrl-C.
    Devnet(devnet::DevnetArgs),
    /// Make TLS certificates with a local CA (development and small deployments): a CA, node
    /// certificates, operator client certificates, the miners' CA bundle, or a dev cluster's set.
    Certs {
        /// The certs command.
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// Backup files (written by `admin snapshot save`), read offline.
    Snapshot {
        /// The snapshot command.
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Restore a node's fresh data dir from a backup, offline (the node is stopped; its data
    /// dir holds no log or state, its enclave directory may stay). Do this for every member of
    /// the cluster being restored, then start them: docs/operations.md "Backup and restore".
    Restore {
        /// The node's configuration (its node_id and data_dir are used).
        #[arg(long)]
        config: PathBuf,
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
    },
    /// Audit log tools.
    Audit {
        /// The audit command.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Generate an sr25519 key (e.g. a worker's identity) into a new file with mode 0600 and print
    /// its public key. The file holds JSON {"seed": hex, "public_key": hex}.
    Keygen {
        /// Where to write the key. Refuses to overwrite unless --force.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

/// An error that ends the process with a given exit code, after what the command printed (the
/// command has said why; `message` adds to it when not empty).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitWith {
    /// The process exit code.
    pub code: i32,
    /// Printed to stderr when not empty.
    pub message: String,
}

impl ExitWith {
    /// Exit with `code`, nothing more to print.
    pub fn code(code: i32) -> Self {
        ExitWith {
            code,
            message: String::new(),
        }
    }
}

/// Backup file tools.
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Check a backup file whole (manifest, size, SHA-256, the snapshot's own checksums and
    /// state) and print what it holds as one JSON object. Exit code 1 if it is damaged.
    Inspect {
        /// The backup file.
        file: PathBuf,
    },
}

/// Copies a backup's snapshot bytes into a temporary file under `dir`, checked against the
/// manifest.
fn unpack_backup(
    file: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<(crate::backup::Manifest, tempfile::NamedTempFile)> {
    use anyhow::Context;
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut r = std::io::BufReader::new(f);
    let m = crate::backup::read_manifest(&mut r).with_context(|| file.display().to_string())?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".gatekeeper-restore-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    crate::backup::copy_snapshot(&m, &mut r, tmp.as_file_mut())
        .with_context(|| file.display().to_string())?;
    Ok((m, tmp))
}

/// Runs a snapshot command.
pub fn snapshot(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Inspect { file } => {
            let (m, tmp) = unpack_backup(&file, &std::env::temp_dir())?;
            let (meta, data) = gatekeeper_raft::sm_store::SmStore::read_snapshot_file(tmp.path())
                .map_err(|e| {
                anyhow::anyhow!("{}: the snapshot is damaged: {e}", file.display())
            })?;
            let index = meta.last_log_id.map_or(0, |l| l.index);
            if index != m.index {
                anyhow::bail!(
                    "{}: the snapshot covers index {index}, the manifest says {}",
                    file.display(),
                    m.index
                );
            }
            let st = &data.applied.state;
            let membership = meta.last_membership.membership();
            let voters = membership.voter_ids().collect();
            let nodes: Vec<_> = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
            let (members, epochs) = crate::backup::describe(st, &voters, &nodes);
            outln!(
                "{}",
                serde_json::json!({
                    "file": file,
                    "check": "ok",
                    "gatekeeper_id": m.gatekeeper_id,
                    "source_node": m.source_node,
                    "created_at_ms": m.created_at_ms,
                    "index": index,
                    "term": meta.last_log_id.map_or(0, |l| l.leader_id.term),
                    "snapshot_bytes": m.snapshot_bytes,
                    "snapshot_sha256": m.snapshot_sha256,
                    "certified_by": data.certificate.as_ref().map(|c| c.signatures.keys().copied().collect::<Vec<_>>()),
                    "members": members,
                    "epochs": epochs,
                    "workers": st.workers.len(),
                    "clusters": st.clusters.len(),
                    "contracts": st.contracts.len(),
                    "operators": st.operators.keys().collect::<Vec<_>>(),
                    "chain_cursor_block": st.chain.cursor.as_ref().map(|c| c.block),
                })
            );
            Ok(())
        }
    }
}

/// `gatekeeper restore`: a fresh data dir from a backup.
pub async fn restore(config: &std::path::Path, from: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let c = crate::config::NodeConfig::load_from_process(Some(config))?;
    let data_dir = &c.data_dir;
    gatekeeper_raft::private_fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let (manifest, tmp) = unpack_backup(from, data_dir)?;
    let header = gatekeeper_raft::sm_store::SmStore::snapshot_file_meta(tmp.path())
        .map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))?;
    if header.last_log_id.map_or(0, |l| l.index) != manifest.index {
        anyhow::bail!(
            "{}: the snapshot covers another index than its manifest says ({})",
            from.display(),
            manifest.index
        );
    }
    let (meta, applied) =
        gatekeeper_raft::replica::Replica::restore_data_dir(c.node_id, data_dir, tmp.path())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("restoring {} from {}", data_dir.display(), from.display()))?;
    drop(tmp);
    // What this node is in the restored state (not the manifest's view at the time of the save).
    let membership = meta.last_membership.membership();
    let voters = membership.voter_ids().collect();
    let nodes: Vec<_> = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
    let (members, epochs) = crate::backup::describe(&applied.state, &voters, &nodes);
    let member = members.iter().find(|x| x.node_id == c.node_id);
    let holders: Vec<u64> = epochs
        .iter()
        .filter(|e| e.status == "active")
        .flat_map(|e| e.share_holders.iter().copied())
        .collect();
    outln!(
        "{}",
        serde_json::json!({
            "restored": data_dir,
            "node_id": c.node_id,
            "index": meta.last_log_id.map_or(0, |l| l.index),
            "term": meta.last_log_id.map_or(0, |l| l.leader_id.term),
            "member": member.is_some(),
            "share_holder": holders.contains(&c.node_id),
            "enclave_public_key": member.map(|x| x.enclave_public_key.clone()),
            "next": "start this node with the same enclave directory as before; restore and start every member listed in the manifest",
        })
    );
    if member.is_none() {
        eprintln!(
            "warning: node {} is not a member in this backup (members: {:?}); it will not be part of the restored cluster",
            c.node_id,
            members.iter().map(|x| x.node_id).collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// Audit log tools.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check an audit log's hash chain: prints the number of lines, or the first broken line
    /// and why (exit code 1).
    Verify {
        /// The audit log file (a node's `audit_path`).
        file: PathBuf,
    },
}

/// Runs an audit command.
pub fn audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { file } => match crate::audit::verify(&file) {
            Ok(n) => {
                let first = std::fs::read(&file)
                    .ok()
                    .and_then(|b| {
                        b.split(|c| *c == b'\n')
                            .next()
                            .and_then(|l| serde_json::from_slice::<crate::audit::Line>(l).ok())
                    })
                    .map(|l| l.seq);
                outln!(
                    "{}",
                    serde_json::json!({"file": file, "lines": n, "first_seq": first, "chain": "ok"})
                );
                Ok(())
            }
            Err(b) => anyhow::bail!("{}: the chain breaks at {b}", file.display()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn admin_tls_flags_do_not_collide_with_subcommand_arguments() {
        // `put KEY VALUE` has a positional `key`; the TLS `--key` must not be confused with it.
        let cli = Cli::try_parse_from([
            "gatekeeper",
            "admin",
            "--endpoint",
            "h:1",
            "--ca",
            "ca.pem",
            "--cert",
            "op.pem",
            "--key",
            "op.key",
            "put",
            "k",
            "v",
        ])
        .unwrap();
        let Command::Admin { tls, command, .. } = cli.command else {
            panic!("not admin")
        };
        assert_eq!(tls.key.as_deref(), Some(std::path::Path::new("op.key")));
        assert_eq!(tls.ca.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert!(
            matches!(command, admin::AdminCommand::Put { key, value } if key == "k" && value == "v")
        );
        // Global: the flags may come after the subcommand too.
        let cli = Cli::try_parse_from([
            "gatekeeper",
            "admin",
            "--endpoint",
            "h:1",
            "status",
            "--plaintext",
        ])
        .unwrap();
        let Command::Admin { tls, .. } = cli.command else {
            panic!("not admin")
        };
        assert!(tls.plaintext);
    }
}
