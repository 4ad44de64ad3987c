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
