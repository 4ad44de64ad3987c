//! `gatekeeper certs`: development and small-deployment certificates (rcgen, through
//! [`crate::tls::issue`]).
//!
//! | command | writes |
//! |---|---|
//! | `certs ca --out DIR` | `DIR/ca.pem`, `DIR/ca.key` |
//! | `certs node --ca DIR --name N --host H... --out OUT` | `OUT/N.pem`, `OUT/N.key` (serverAuth + clientAuth, SANs = hosts) |
//! | `certs operator --ca DIR --name N --out OUT` | `OUT/N.pem`, `OUT/N.key` (clientAuth) |
//! | `certs miner-bundle --ca DIR... --out FILE` | `FILE`: the CA certificate(s) miners trust |
//! | `certs dev-cluster --out DIR --nodes 3` | the [`DevCluster`] layout |
//!
//! Private keys are written with mode 0600. Nothing is overwritten without `--force`, and the
//! check covers every file of a command before any is written.

use crate::clock;
use crate::tls::issue::{check_name, Authority, Issued, Validity};
use crate::tls::{load_ca_bundle, CertInfo};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Default lifetime of a CA certificate, in days.
pub const CA_DAYS: u32 = 3650;
/// Default lifetime of node and operator certificates, in days.
pub const LEAF_DAYS: u32 = 365;

/// The `certs` subcommands.
#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Make a CA (self-signed): DIR/ca.pem and DIR/ca.key. Run it twice (two directories) for a
    /// separate operator CA.
    Ca {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Gatekeeper cluster CA")]
        name: String,
        /// Lifetime in days.
        #[arg(long, default_value_t = CA_DAYS)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Make a node certificate signed by the CA in --ca: OUT/NAME.pem and OUT/NAME.key. Usable as
    /// server and client certificate; its subjectAltNames are the --host values.
    Node {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca: PathBuf,
        /// The node's name (subject CN and file name), e.g. node-1.
        #[arg(long)]
        name: String,
        /// An address the node is reached at (IP or DNS name); repeat for several.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Lifetime in days.
        #[arg(long, default_value_t = LEAF_DAYS)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Make an operator client certificate signed by the CA in --ca: OUT/NAME.pem, OUT/NAME.key.
    Operator {
        /// Directory holding ca.pem and ca.key (the operator CA).
        #[arg(long)]
        ca: PathBuf,
        /// The operator's name (subject CN, matched by an admin allowlist; also the file name).
        #[arg(long)]
        name: String,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Lifetime in days.
        #[arg(long, default_value_t = LEAF_DAYS)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Write the CA certificate(s) miners must trust to FILE (repeat --ca to bundle several,
    /// e.g. while rolling over to a new CA).
    MinerBundle {
        /// Directory holding ca.pem; repeat for several.
        #[arg(long = "ca", required = true)]
        cas: Vec<PathBuf>,
        /// The bundle file to write.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Make everything a local cluster needs in one directory: a CA, N node certificates, one
    /// operator certificate and the miner bundle (layout in docs/operations.md).
    DevCluster {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// How many node certificates (node-1 … node-N).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// subjectAltNames of every node certificate; repeat for several.
        #[arg(long = "host", default_values_t = [String::from("127.0.0.1"), String::from("localhost")])]
        hosts: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// One file a command wrote, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The file.
    pub path: PathBuf,
    /// What it holds (one line).
    pub what: String,
}

/// Runs a `certs` subcommand and prints what it wrote.
pub fn run(command: CertsCommand) -> Result<()> {
    let written = match command {
        CertsCommand::Ca {
            out,
            name,
            days,
            force,
        } => make_ca(&out, &name, days, force)?,
        CertsCommand::Node {
            ca,
            name,
            hosts,
            out,
            days,
            force,
        } => make_node(&ca, &name, &hosts, &out, days, force)?,
        CertsCommand::Operator {
            ca,
            name,
            out,
            days,
            force,
        } => make_operator(&ca, &name, &out, days, force)?,
        CertsCommand::MinerBundle { cas, out, force } => miner_bundle(&cas, &out, force)?,
        CertsCommand::DevCluster {
            out,
            nodes,
            hosts,
            force,
        } => dev_cluster(&out, nodes, &hosts, force)?.written,
    };
    for w in written {
        outln!("wrote {}: {}", w.path.display(), w.what);
    }
    Ok(())
}

fn describe(kind: &str, info: &CertInfo) -> String {
    let mut sans: Vec<String> = info.ip_addresses.iter().map(|i| i.to_string()).collect();
    sans.extend(info.dns_names.iter().cloned());
    let sans = if sans.is_empty() {
        String::new()
    } else {
        format!(", SANs {}", sans.join(" "))
    };
    format!(
        "{kind} {}{sans}, valid until {}, spki-sha256 {}",
        info.subject,
        info.not_after_text,
        hex::encode(info.spki_sha256)
    )
}

/// Refuses if any target exists (unless `force`), before anything is written.
fn check_targets(targets: &[&Path], force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    for t in targets {
        if t.exists() {
            bail!(
                "{} already exists; pass --force to overwrite it",
                t.display()
            );
        }
    }
    Ok(())
}

/// Writes a new file with `mode` (an existing one is replaced, so the mode always holds).
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot replace {}", path.display())),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn write_pair(
    issued: &Issued,
    cert: &Path,
    key: &Path,
    kind: &str,
    out: &mut Vec<Written>,
) -> Result<()> {
    write_file(cert, issued.cert_pem.as_bytes(), 0o644)?;
    write_file(key, issued.key_pem.as_bytes(), 0o600)?;
    out.push(Written {
        path: cert.to_path_buf(),
        what: describe(kind, &issued.info),
    });
    out.push(Written {
        path: key.to_path_buf(),
        what: format!("private key of {} (mode 0600)", issued.info.subject),
    });
    Ok(())
}

/// The CA certificate file in a CA directory.
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// The CA key file in a CA directory.
pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}

/// Reads the CA of a directory `certs ca` wrote, checking it is a CA valid now.
pub fn load_authority(dir: &Path) -> Result<Authority> {
    let (cert, key) = (ca_cert_path(dir), ca_key_path(dir));
    load_ca_bundle(&cert, clock::now())?;
    let cert_pem = std::fs::read_to_string(&cert)
        .with_context(|| format!("cannot read {}", cert.display()))?;
    let key_pem = Zeroizing::new(
        std::fs::read_to_string(&key).with_context(|| format!("cannot read {}", key.display()))?,
    );
    Authority::from_pem(&cert_pem, &key_pem).with_context(|| format!("CA in {}", dir.display()))
}

/// `certs ca`: a new CA in `out`.
pub fn make_ca(out: &Path, name: &str, days: u32, force: bool) -> Result<Vec<Written>> {
    let (cert, key) = (ca_cert_path(out), ca_key_path(out));
    check_targets(&[&cert, &key], force)?;
    let (_, issued) = Authority::generate(name, Validity::days_from(clock::now(), days))?;
    let mut written = vec![];
    write_pair(&issued, &cert, &key, "CA certificate", &mut written)?;
    Ok(written)
}

/// `certs node`: a node certificate from the CA in `ca`, written to `out/<name>.{pem,key}`.
pub fn make_node(
    ca: &Path,
    name: &str,
    hosts: &[String],
    out: &Path,
    days: u32,
    force: bool,
) -> Result<Vec<Written>> {
    check_name(name)?;
    let (cert, key) = (
        out.join(format!("{name}.pem")),
        out.join(format!("{name}.key")),
    );
    check_targets(&[&cert, &key], force)?;
    let issued = load_authority(ca)?.node(name, hosts, Validity::days_from(clock::now(), days))?;
    let mut written = vec![];
    write_pair(&issued, &cert, &key, "node certificate", &mut written)?;
    Ok(written)
}

/// `certs operator`: an operator certificate from the CA in `ca`, written to
/// `out/<name>.{pem,key}`.
pub fn make_operator(
    ca: &Path,
    name: &str,
    out: &Path,
    days: u32,
    force: bool,
) -> Result<Vec<Written>> {
    check_name(name)?;
    let (cert, key) = (
        out.join(format!("{name}.pem")),
        out.join(format!("{name}.key")),
    );
    check_targets(&[&cert, &key], force)?;
    let issued = load_authority(ca)?.operator(name, Validity::days_from(clock::now(), days))?;
    let mut written = vec![];
    write_pair(&issued, &cert, &key, "operator certificate", &mut written)?;
    Ok(written)
}

/// `certs miner-bundle`: the CA certificates of `cas` (directories), concatenated into `out`.
pub fn miner_bundle(cas: &[PathBuf], out: &Path, force: bool) -> Result<Vec<Written>> {
    check_targets(&[out], force)?;
    let mut bundle = String::new();
    let mut subjects = vec![];
    for dir in cas {
        let cert = ca_cert_path(dir);
        for der in load_ca_bundle(&cert, clock::now())? {
            subjects.push(CertInfo::parse(&der).map_err(anyhow::Error::msg)?.subject);
        }
        bundle.push_str(
            &std::fs::read_to_string(&cert)
                .with_context(|| format!("cannot read {}", cert.display()))?,
        );
    }
    write_file(out, bundle.as_bytes(), 0o644)?;
    Ok(vec![Written {
        path: out.to_path_buf(),
        what: format!("CA bundle for miners: {}", subjects.join("; ")),
    }])
}

/// The files of a `certs dev-cluster` directory.
///
/// ```text
/// DIR/ca.pem, DIR/ca.key                 the CA (signs node and operator certificates)
/// DIR/node-<i>.pem, DIR/node-<i>.key     node i = 1..=N (CN node-<i>, SANs = hosts)
/// DIR/operator.pem, DIR/operator.key     operator "operator" (clientAuth)
/// DIR/miner-bundle.pem                   the CA certificate, for miners
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCluster {
    /// The directory.
    pub dir: PathBuf,
    /// How many nodes.
    pub nodes: usize,
    /// Every file written, in order.
    pub written: Vec<Written>,
}

/// The operator name `certs dev-cluster` uses.
pub const DEV_OPERATOR: &str = "operator";

impl DevCluster {
    /// The layout of `dir` (whether or not it was generated yet).
    pub fn at(dir: impl Into<PathBuf>, nodes: usize) -> DevCluster {
        DevCluster {
            dir: dir.into(),
            nodes,
            written: vec![],
        }
    }

    /// The CA certificate (cluster CA and, in development, operator CA).
    pub fn ca_cert(&self) -> PathBuf {
        ca_cert_path(&self.dir)
    }

    /// The CA key.
    pub fn ca_key(&self) -> PathBuf {
        ca_key_path(&self.dir)
    }

    /// Node `i`'s name (`node-<i>`, 1-based).
    pub fn node_name(i: usize) -> String {
        format!("node-{i}")
    }

    /// Node `i`'s certificate (1-based).
    pub fn node_cert(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.pem", Self::node_name(i)))
    }

    /// Node `i`'s key (1-based).
    pub fn node_key(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.key", Self::node_name(i)))
    }

    /// The operator certificate.
    pub fn operator_cert(&self) -> PathBuf {
        self.dir.join(format!("{DEV_OPERATOR}.pem"))
    }

    /// The operator key.
    pub fn operator_key(&self) -> PathBuf {
        self.dir.join(format!("{DEV_OPERATOR}.key"))
    }

    /// The miners' CA bundle.
    pub fn miner_bundle(&self) -> PathBuf {
        self.dir.join("miner-bundle.pem")
    }

    fn targets(&self) -> Vec<PathBuf> {
        let mut t = vec![self.ca_cert(), self.ca_key()];
        for i in 1..=self.nodes {
            t.push(self.node_cert(i));
            t.push(self.node_key(i));
        }
        t.extend([
            self.operator_cert(),
            self.operator_key(),
            self.miner_bundle(),
        ]);
        t
    }
}

/// `certs dev-cluster`: a CA, `nodes` node certificates with `hosts` as SANs, the operator
/// certificate and the miner bundle in `out` ([`DevCluster`] layout).
pub fn dev_cluster(out: &Path, nodes: usize, hosts: &[String], force: bool) -> Result<DevCluster> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let mut layout = DevCluster::at(out, nodes);
    let targets = layout.targets();
    check_targets(
        &targets.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
        force,
    )?;
    let now = clock::now();
    let (ca, ca_issued) =
        Authority::generate("Gatekeeper dev CA", Validity::days_from(now, CA_DAYS))?;
    let mut written = vec![];
    write_pair(
        &ca_issued,
        &layout.ca_cert(),
        &layout.ca_key(),
        "CA certificate",
        &mut written,
    )?;
    for i in 1..=nodes {
        let issued = ca.node(
            &DevCluster::node_name(i),
            hosts,
            Validity::days_from(now, LEAF_DAYS),
        )?;
        write_pair(
            &issued,
            &layout.node_cert(i),
            &layout.node_key(i),
            "node certificate",
            &mut written,
        )?;
    }
    let op = ca.operator(DEV_OPERATOR, Validity::days_from(now, LEAF_DAYS))?;
    write_pair(
        &op,
        &layout.operator_cert(),
        &layout.operator_key(),
        "operator certificate",
        &mut written,
    )?;
    write_file(&layout.miner_bundle(), ca.cert_pem().as_bytes(), 0o644)?;
    written.push(Written {
        path: layout.miner_bundle(),
        what: format!("CA bundle for miners: {}", ca_issued.info.subject),
    });
    layout.written = written;
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{ClientTls, Identity, ServerTls};
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn dev_cluster_writes_the_documented_layout_and_every_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let hosts = vec!["127.0.0.1".to_string(), "gk.example".to_string()];
        let d = dev_cluster(&out, 2, &hosts, false).unwrap();
        assert_eq!(d.written.len(), 2 + 4 + 2 + 1);
        let names: Vec<String> = d
            .written
            .iter()
            .map(|w| w.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca.key",
                "node-1.pem",
                "node-1.key",
                "node-2.pem",
                "node-2.key",
                "operator.pem",
                "operator.key",
                "miner-bundle.pem"
            ]
        );
        for w in &d.written {
            let want = if w.path.extension().unwrap() == "key" {
                0o600
            } else {
                0o644
            };
            assert_eq!(mode(&w.path), want, "{}", w.path.display());
        }
        let now = clock::now();
        for i in 1..=2 {
            let id = Identity::load(&d.node_cert(i), &d.node_key(i), now).unwrap();
            assert_eq!(
                id.leaf().common_name.as_deref(),
                Some(&*format!("node-{i}"))
            );
            assert_eq!(id.leaf().dns_names, ["gk.example"]);
            assert_eq!(
                id.leaf().ip_addresses,
                ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
            );
            ServerTls::mutual(d.node_cert(i), d.node_key(i), d.ca_cert())
                .build(now)
                .unwrap();
        }
        ClientTls::load(
            &d.miner_bundle(),
            Some((&d.operator_cert(), &d.operator_key())),
            now,
        )
        .unwrap();
        // The same layout, computed without generating.
        assert_eq!(DevCluster::at(&out, 2).targets(), d.targets());
    }

    #[test]
    fn nothing_is_overwritten_without_force_and_force_keeps_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        make_ca(&ca, "Test CA", 10, false).unwrap();
        let before = std::fs::read(ca_cert_path(&ca)).unwrap();
        let err = make_ca(&ca, "Test CA", 10, false).unwrap_err().to_string();
        assert!(err.contains("already exists; pass --force"), "{err}");
        assert_eq!(std::fs::read(ca_cert_path(&ca)).unwrap(), before);
        // A key left world-readable is replaced by a 0600 one under --force.
        std::fs::set_permissions(ca_key_path(&ca), std::fs::Permissions::from_mode(0o644)).unwrap();
        make_ca(&ca, "Test CA", 10, true).unwrap();
        assert_ne!(std::fs::read(ca_cert_path(&ca)).unwrap(), before);
        assert_eq!(mode(&ca_key_path(&ca)), 0o600);

        // dev-cluster checks every target before writing any.
        let out = dir.path().join("dev");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("operator.pem"), "keep me").unwrap();
        let err = dev_cluster(&out, 1, &["127.0.0.1".into()], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("operator.pem already exists"), "{err}");
        assert!(!out.join("ca.pem").exists());
    }

    #[test]
    fn node_operator_and_bundle_from_separate_cas() {
        let dir = tempfile::tempdir().unwrap();
        let (cluster, ops) = (
            dir.path().join("cluster-ca"),
            dir.path().join("operator-ca"),
        );
        make_ca(&cluster, "Cluster CA", 10, false).unwrap();
        make_ca(&ops, "Operator CA", 10, false).unwrap();
        let out = dir.path().join("out");
        let w = make_node(
            &cluster,
            "node-1",
            &["127.0.0.1".into(), "gk1.example".into()],
            &out,
            5,
            false,
        )
        .unwrap();
        assert!(
            w[0].what.contains("SANs 127.0.0.1 gk1.example"),
            "{:?}",
            w[0]
        );
        assert!(w[0].what.contains("spki-sha256 "), "{:?}", w[0]);
        make_operator(&ops, "alice", &out, 5, false).unwrap();
        let now = clock::now();
        let alice = Identity::load(&out.join("alice.pem"), &out.join("alice.key"), now).unwrap();
        assert_eq!(alice.leaf().common_name.as_deref(), Some("alice"));
        assert!(alice.leaf().dns_names.is_empty());

        let bundle = dir.path().join("miners.pem");
        miner_bundle(&[cluster.clone(), ops.clone()], &bundle, false).unwrap();
        assert_eq!(load_ca_bundle(&bundle, now).unwrap().len(), 2);

        // A name that would escape the output directory is refused.
        let err = make_node(&cluster, "../x", &["h".into()], &out, 5, false).unwrap_err();
        assert!(err.to_string().contains("name \"../x\""), "{err}");
        // A node certificate needs a host.
        let err = make_node(&cluster, "node-2", &[], &out, 5, false).unwrap_err();
        assert!(err.to_string().contains("at least one host"), "{err}");
        // The CA directory must hold a CA.
        let err = make_operator(&dir.path().join("nope"), "bob", &out, 5, false).unwrap_err();
        assert!(err.to_string().contains("ca.pem: no such file"), "{err:#}");
    }
}
