//! `gatekeeper devnet`: a whole local network in one command.
//!
//! 1. starts the dev chain (embedded: `devchain::DevChain`, persisted under `<dir>/chain`);
//! 2. starts `--nodes` gatekeeper nodes as separate processes of this same binary
//!    (`gatekeeper node --config <dir>/node-<i>/gatekeeper.toml`), each with its own data dir and
//!    log file, following the dev chain;
//! 3. initialises the cluster and waits until every node holds the genesis master key;
//! 4. registers a demo worker on the dev chain, with a cluster and a contract;
//! 5. a demo miner (the client SDK) fetches the worker key and the contract key, verifying the
//!    signatures and opening the HPKE envelopes;
//! 6. prints a summary and keeps running until Ctrl-C (or exits with `--exit-after-demo`), then
//!    stops every node with SIGTERM and waits for it.
//!
//! Ports (with the default `--base-port 9944`): the chain on 9944; node `i` Raft on
//! `base + 10 + i`, API on `base + 20 + i`, metrics on `base + 30 + i`, admin on `base + 40 + i`.
//!
//! TLS on every listener: before starting the nodes the devnet writes a development CA, node
//! certificates, an operator certificate and the miners' CA bundle into `<dir>/certs`
//! (`gatekeeper certs dev-cluster`); the nodes, the devnet's own admin calls and the demo miner
//! use them.

use anyhow::{bail, Context, Result};
use devchain::actions::{Action, Profile as DevProfile};
use devchain::runtime::{Public, H256};
use gatekeeper_client::MinerClient;
use gatekeeper_proto::v1 as pb;
use gatekeeper_proto::v1::admin_service_client::AdminServiceClient;
use indicatif::{ProgressBar, ProgressStyle};
use keyring::sign::KeyTarget;
use keyring::{ContractId, Sr25519Keypair};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// `gatekeeper devnet` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DevnetArgs {
    /// Directory for the chain, the nodes' data and logs. Created if missing; a previous
    /// devnet there is wiped first.
    #[arg(long, default_value = "gatekeeper-devnet")]
    pub dir: PathBuf,
    /// Number of gatekeeper nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// First port: the chain listens on it, nodes on base+10+i (Raft), base+20+i (API),
    /// base+30+i (metrics) and base+40+i (admin).
    #[arg(long, default_value_t = 9944)]
    pub base_port: u16,
    /// Milliseconds between dev chain blocks.
    #[arg(long, default_value_t = 1000)]
    pub block_time_ms: u64,
    /// Stop everything and exit 0 after the demo and the summary.
    #[arg(long)]
    pub exit_after_demo: bool,
}

const MARKER: &str = ".gatekeeper-devnet";
const NODE_LOG: &str = "node.log";
const DEMO_CLUSTER: [u8; 32] = [0xc1; 32];
const DEMO_CONTRACT: [u8; 32] = [0xc2; 32];

/// One node's id, addresses and files.
#[derive(Debug, Clone, PartialEq)]
struct NodeInfo {
    id: u64,
    raft: String,
    api: String,
    metrics: String,
    admin: String,
    data: PathBuf,
    log: PathBuf,
}

/// The certificates of a devnet: `<dir>/certs` as `gatekeeper certs dev-cluster` writes them.
fn certs(dir: &Path, nodes: u64) -> crate::cli::certs::DevCluster {
    crate::cli::certs::DevCluster::at(dir.join("certs"), nodes as usize)
}

/// The devnet's operator connection (set once, at the start of [`run`]).
static ADMIN_TLS: std::sync::OnceLock<crate::cli::admin::AdminTls> = std::sync::OnceLock::new();

/// A running node process.
struct NodeProc {
    info: NodeInfo,
    child: Child,
}

/// What the genesis left: the leader and the newest epoch with its master public key.
#[derive(Debug, Clone, PartialEq)]
struct Genesis {
    leader: u64,
    epoch: u64,
    master: Vec<u8>,
}

/// A key the demo miner fetched: only what the summary shows.
#[derive(Debug, Clone, PartialEq)]
struct DemoKey {
    public: [u8; 32],
    epoch: u64,
    served_by: u64,
}

impl From<&gatekeeper_client::FetchedKey> for DemoKey {
    fn from(k: &gatekeeper_client::FetchedKey) -> Self {
        DemoKey {
            public: *k.keypair.public_key().as_bytes(),
            epoch: k.epoch,
            served_by: k.served_by,
        }
    }
}

/// Everything the final summary prints.
#[derive(Debug, Clone)]
struct Summary {
    chain_url: String,
    dir: PathBuf,
    nodes: Vec<NodeInfo>,
    genesis: Genesis,
    worker: [u8; 32],
    worker_key: DemoKey,
    contract_key: DemoKey,
}

/// One step with a spinner (on a terminal) and a line when it is done.
struct Step {
    bar: Option<ProgressBar>,
    started: Instant,
    title: String,
}

impl Step {
    fn start(title: &str) -> Step {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_message(title.to_string());
            b.enable_steady_tick(Duration::from_millis(100));
            b
        });
        Step {
            bar,
            started: Instant::now(),
            title: title.to_string(),
        }
    }

    fn note(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(format!("{}: {msg}", self.title));
        }
    }

    fn done(self, detail: &str) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        outln!(
            "✓ {} — {detail} ({:.1}s)",
            self.title,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn fail(self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        outln!("✗ {}", self.title);
    }
}

fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_none();
        if !empty && !dir.join(MARKER).exists() {
            bail!(
                "{} exists and is not a devnet directory; choose another --dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot clear the previous devnet in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "created by `gatekeeper devnet`; wiped by its next run\n",
    )?;
    Ok(())
}

fn port(base: u16, offset: u64) -> Result<u16> {
    u16::try_from(u64::from(base) + offset).context("--base-port is too high for these ports")
}

/// Node `id`'s addresses (from `--base-port`) and files (under its directory `ndir`).
fn node_info(id: u64, base_port: u16, ndir: &Path) -> Result<NodeInfo> {
    Ok(NodeInfo {
        id,
        raft: format!("127.0.0.1:{}", port(base_port, 10 + id)?),
        api: format!("127.0.0.1:{}", port(base_port, 20 + id)?),
        metrics: format!("127.0.0.1:{}", port(base_port, 30 + id)?),
        admin: format!("127.0.0.1:{}", port(base_port, 40 + id)?),
        data: ndir.join("data"),
        log: ndir.join(NODE_LOG),
    })
}

fn node_config(n: &NodeInfo, chain_url: &str, certs: &crate::cli::certs::DevCluster) -> String {
    format!(
        "# written by `gatekeeper devnet`\n\
         node_id = {id}\n\
         data_dir = {data:?}\n\
         raft_listen = {raft:?}\n\
         api_listen = {api:?}\n\
         admin_listen = {admin:?}\n\
         metrics_listen = {metrics:?}\n\
         tls_ca_file = {ca:?}\n\
         tls_cert_file = {cert:?}\n\
         tls_key_file = {key:?}\n\
         election_timeout_min_ms = 500\n\
         election_timeout_max_ms = 1000\n\
         heartbeat_interval_ms = 150\n\
         mode = \"development\"\n\
         chain_url = {chain_url:?}\n\
         chain_profile = \"gatekeeper\"\n",
        id = n.id,
        data = n.data.display().to_string(),
        raft = n.raft,
        api = n.api,
        admin = n.admin,
        metrics = n.metrics,
        ca = certs.ca_cert().display().to_string(),
        cert = certs.node_cert(n.id as usize).display().to_string(),
        key = certs.node_key(n.id as usize).display().to_string(),
    )
}

/// The initial voters: every node.
fn init_members(nodes: &[NodeInfo]) -> Vec<pb::InitMember> {
    nodes
        .iter()
        .map(|n| pb::InitMember {
            node_id: n.id,
            raft_address: n.raft.clone(),
            api_address: n.api.clone(),
        })
        .collect()
}

/// What an unsealed node says about the genesis (either part may still be missing).
#[derive(Debug, Clone, PartialEq)]
struct UnsealedView {
    /// The leader it knows.
    leader: Option<u64>,
    /// Its newest epoch and that epoch's master public key.
    newest_epoch: Option<(u64, Vec<u8>)>,
}

/// One node's view of the genesis: `None` until it is unsealed.
fn unsealed_view(s: &pb::StatusResponse) -> Option<UnsealedView> {
    let seal = s.seal.as_ref()?;
    if seal.state != pb::SealState::Unsealed as i32 {
        return None;
    }
    Some(UnsealedView {
        leader: s.leader_id,
        newest_epoch: s
            .epochs
            .last()
            .map(|e| (e.epoch, e.master_public_key.clone())),
    })
}

/// The chain actions that make the demo worker, its cluster and the demo contract.
fn demo_actions(worker: Public) -> [Action; 3] {
    [
        Action::RegisterWorker {
            worker,
            provider: Some(devchain::runtime::AttestationProvider::Root),
            confidence_level: 1,
        },
        Action::CreateCluster {
            cluster: H256(DEMO_CLUSTER),
            workers: vec![worker],
        },
        Action::InstantiateContract {
            contract: H256(DEMO_CONTRACT),
            cluster: H256(DEMO_CLUSTER),
        },
    ]
}

/// Whether the chain cursor has fully applied `block`.
fn applied_through(c: &pb::ChainStatus, block: u64) -> bool {
    c.cursor_block > block || (c.cursor_block == block && c.cursor_block_complete)
}

/// The summary printed once the demo has run.
fn summary_lines(s: &Summary) -> Vec<String> {
    let mut l = vec![
        String::new(),
        "Gatekeeper devnet is up".to_string(),
        format!("  chain          {} (gatekeeper profile)", s.chain_url),
    ];
    l.extend(s.nodes.iter().map(|n| {
        format!(
            "  node {}         api {}  admin {}  raft {}  metrics http://{}/metrics{}",
            n.id,
            n.api,
            n.admin,
            n.raft,
            n.metrics,
            if n.id == s.genesis.leader {
                "  (leader)"
            } else {
                ""
            }
        )
    }));
    l.push(format!(
        "  epoch          {}, master public key {}",
        s.genesis.epoch,
        hex::encode(&s.genesis.master)
    ));
    l.push(format!("  demo worker    {}", hex::encode(s.worker)));
    l.push(format!(
        "  worker key     {} (epoch {}, served by node {})",
        hex::encode(s.worker_key.public),
        s.worker_key.epoch,
        s.worker_key.served_by
    ));
    l.push(format!(
        "  contract key   {} (contract {}, cluster {})",
        hex::encode(s.contract_key.public),
        hex::encode(DEMO_CONTRACT),
        hex::encode(DEMO_CLUSTER)
    ));
    l.push(format!("  data and logs  {}", s.dir.display()));
    l.extend(
        s.nodes
            .iter()
            .map(|n| format!("                 node {}: {}", n.id, n.log.display())),
    );
    l.push(format!(
        "                 chain: {}",
        s.dir.join("chain").display()
    ));
    l.extend(try_lines(s));
    l
}

/// The demo worker's key file (`gatekeeper keygen` format) in the devnet's folder.
pub fn demo_worker_file(dir: &Path) -> PathBuf {
    dir.join("demo-worker.json")
}

/// The "Try:" part of [`summary_lines`].
fn try_lines(s: &Summary) -> Vec<String> {
    let first_admin = s
        .nodes
        .first()
        .map(|n| n.admin.as_str())
        .unwrap_or_default();
    let c = certs(&s.dir, s.nodes.len() as u64);
    vec![
        String::new(),
        "Try:".to_string(),
        format!(
            "  export GATEKEEPER_ADMIN_CA={} GATEKEEPER_ADMIN_CERT={} GATEKEEPER_ADMIN_KEY={}",
            c.ca_cert().display(),
            c.operator_cert().display(),
            c.operator_key().display()
        ),
        format!("  gatekeeper admin --endpoint {first_admin} status"),
        format!(
            "  gatekeeper miner fetch-key {} --worker-key-file {} --ca {} --kind contract --id {}",
            s.nodes
                .iter()
                .map(|n| format!("--endpoint {}", n.api))
                .collect::<Vec<_>>()
                .join(" "),
            demo_worker_file(&s.dir).display(),
            c.miner_bundle().display(),
            hex::encode(DEMO_CONTRACT)
        ),
        format!(
            "  gatekeeper-devchain emit --url {} slash-worker --worker {} --reason demo",
            s.chain_url,
            hex::encode(s.worker)
        ),
    ]
}

async fn admin(addr: &str) -> Result<AdminServiceClient<tonic::transport::Channel>> {
    let tls = ADMIN_TLS
        .get()
        .context("the devnet's operator certificate is not set")?;
    crate::cli::admin::connect(addr, tls, Duration::from_secs(20)).await
}

async fn status(api: &str) -> Result<pb::StatusResponse> {
    Ok(admin(api)
        .await?
        .status(pb::StatusRequest {})
        .await?
        .into_inner())
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits up to `limit` for `f` to answer `Some`, checking that every node still runs.
async fn wait_for<T, F, Fut>(
    nodes: &mut [NodeProc],
    limit: Duration,
    what: &str,
    mut f: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        for n in nodes.iter_mut() {
            if let Some(st) = n.child.try_wait()? {
                bail!(
                    "node {} exited ({st}) while waiting for {what}; its log ({}):\n{}",
                    n.info.id,
                    n.info.log.display(),
                    log_tail(&n.info.log, 20)
                );
            }
        }
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop_nodes(nodes: &mut [NodeProc]) {
    for n in nodes.iter() {
        if let Some(pid) = n.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for n in nodes.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(15), n.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                let _ = n.child.kill().await;
            }
        }
    }
}

/// Runs the devnet.
pub async fn run(args: DevnetArgs) -> Result<()> {
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes must be between 1 and 9");
    }
    prepare_dir(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let c = crate::cli::certs::dev_cluster(
        &certs(&dir, args.nodes).dir,
        args.nodes as usize,
        &["127.0.0.1".to_string(), "localhost".to_string()],
        false,
    )
    .context("cannot write the devnet's certificates")?;
    let _ = ADMIN_TLS.set(crate::cli::admin::AdminTls::mutual(
        &c.ca_cert(),
        &c.operator_cert(),
        &c.operator_key(),
    ));
    let mut nodes: Vec<NodeProc> = vec![];
    let result = demo(&args, &dir, &mut nodes).await;
    let outcome = match result {
        Ok(chain) => {
            if args.exit_after_demo {
                outln!("--exit-after-demo: stopping");
            } else {
                outln!("\nRunning. Press Ctrl-C to stop every node and the chain.");
                crate::node::shutdown_signal().await;
                outln!("\nStopping…");
            }
            stop_nodes(&mut nodes).await;
            chain.stop().await;
            Ok(())
        }
        Err(e) => {
            stop_nodes(&mut nodes).await;
            Err(e)
        }
    };
    if outcome.is_ok() {
        outln!("Stopped. Logs and data remain in {}", dir.display());
    }
    outcome
}

/// The demo, step by step; the started nodes go into `nodes` as they start, so that the caller
/// stops them whatever happens.
async fn demo(
    args: &DevnetArgs,
    dir: &Path,
    nodes: &mut Vec<NodeProc>,
) -> Result<devchain::DevChain> {
    let chain = start_chain(args, dir).await?;
    let apis = start_nodes(args, dir, &chain.url(), nodes).await?;
    let genesis = init_cluster(nodes, &apis).await?;
    let worker = register_demo_worker(&chain, nodes, &apis, genesis.leader).await?;
    // The demo worker's key, for trying the miner CLI or the SDK's example against the devnet.
    gatekeeper_client::write_key_file(demo_worker_file(dir), &worker, true)
        .with_context(|| format!("cannot write {}", demo_worker_file(dir).display()))?;
    let keys: Vec<String> = nodes.iter().map(|n| n.info.api.clone()).collect();
    let bundle = certs(dir, args.nodes).miner_bundle();
    let (worker_key, contract_key) = fetch_demo_keys(&keys, &bundle, &worker).await?;
    let summary = Summary {
        chain_url: chain.url(),
        dir: dir.to_path_buf(),
        nodes: nodes.iter().map(|n| n.info.clone()).collect(),
        genesis,
        worker: *worker.public_key().as_bytes(),
        worker_key,
        contract_key,
    };
    for line in summary_lines(&summary) {
        outln!("{line}");
    }
    Ok(chain)
}

/// Step 1: the dev chain.
async fn start_chain(args: &DevnetArgs, dir: &Path) -> Result<devchain::DevChain> {
    let step = Step::start("Starting the dev chain");
    let chain = match devchain::DevChain::start(devchain::Config {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], args.base_port)),
        block_time: Duration::from_millis(args.block_time_ms.max(1)),
        data_dir: Some(dir.join("chain")),
        shapes: devchain::runtime::Shapes::Standard,
    })
    .await
    {
        Ok(c) => c,
        Err(e) => {
            step.fail();
            return Err(e.context("starting the dev chain (is the port in use? try --base-port)"));
        }
    };
    step.done(&format!(
        "{} (genesis {}…, a block every {} ms)",
        chain.url(),
        &hex::encode(chain.genesis_hash())[..16],
        args.block_time_ms
    ));
    Ok(chain)
}

/// Step 2: the node processes, until each answers on its admin listener. Returns the admin
/// addresses.
async fn start_nodes(
    args: &DevnetArgs,
    dir: &Path,
    chain_url: &str,
    nodes: &mut Vec<NodeProc>,
) -> Result<Vec<String>> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let step = Step::start(&format!("Starting {} gatekeeper nodes", args.nodes));
    for id in 1..=args.nodes {
        nodes.push(spawn_node(&exe, dir, id, args.base_port, chain_url)?);
        step.note(&format!("node {id} started"));
    }
    let apis: Vec<String> = nodes.iter().map(|n| n.info.admin.clone()).collect();
    let up = wait_for(
        nodes,
        Duration::from_secs(30),
        "the nodes' admin listeners",
        || all_answer(apis.clone()),
    )
    .await;
    if let Err(e) = up {
        step.fail();
        return Err(e);
    }
    step.done(&format!("admin listeners on {} (TLS)", apis.join(", ")));
    Ok(apis)
}

/// Writes node `id`'s config under `dir` and starts it, logging to its log file.
fn spawn_node(
    exe: &Path,
    dir: &Path,
    id: u64,
    base_port: u16,
    chain_url: &str,
) -> Result<NodeProc> {
    let ndir = dir.join(format!("node-{id}"));
    std::fs::create_dir_all(&ndir)?;
    let logf = std::fs::File::create(ndir.join(NODE_LOG))?;
    let info = node_info(id, base_port, &ndir)?;
    let config = ndir.join("gatekeeper.toml");
    std::fs::write(
        &config,
        node_config(&info, chain_url, &certs(dir, id.max(1))),
    )?;
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GATEKEEPER_") {
            cmd.env_remove(k);
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info,openraft=warn");
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    Ok(NodeProc { info, child })
}

/// `Some` once every API answers a status call.
async fn all_answer(apis: Vec<String>) -> Option<()> {
    for a in &apis {
        status(a).await.ok()?;
    }
    Some(())
}

/// Step 3: init on the first node, then wait until every node is unsealed.
async fn init_cluster(nodes: &mut [NodeProc], apis: &[String]) -> Result<Genesis> {
    let step = Step::start("Initialising the cluster and dealing the genesis master key");
    let infos: Vec<NodeInfo> = nodes.iter().map(|n| n.info.clone()).collect();
    let init = admin(&infos[0].admin)
        .await?
        .init(pb::InitRequest {
            members: init_members(&infos),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("init: {}: {}", s.code(), s.message()))?
        .into_inner();
    step.note("waiting for every node to unseal");
    let unsealed = wait_for(
        nodes,
        Duration::from_secs(60),
        "every node to unseal",
        || genesis_probe(apis.to_vec()),
    )
    .await;
    let genesis = match unsealed {
        Ok(g) => g,
        Err(e) => {
            step.fail();
            return Err(e);
        }
    };
    step.done(&format!(
        "gatekeeper id {}…, threshold {} of {}, leader node {}",
        &hex::encode(&init.gatekeeper_id)[..16],
        init.threshold,
        nodes.len(),
        genesis.leader
    ));
    Ok(genesis)
}

/// `Some` once every node is unsealed: the leader and the newest epoch as the last node sees them.
async fn genesis_probe(apis: Vec<String>) -> Option<Genesis> {
    let mut view = None;
    for a in &apis {
        view = Some(unsealed_view(&status(a).await.ok()?)?);
    }
    let UnsealedView {
        leader,
        newest_epoch,
    } = view?;
    let (epoch, master) = newest_epoch?;
    Some(Genesis {
        leader: leader?,
        epoch,
        master,
    })
}

/// Step 4: a fresh worker, its cluster and the demo contract on chain, applied by the cluster.
async fn register_demo_worker(
    chain: &devchain::DevChain,
    nodes: &mut [NodeProc],
    apis: &[String],
    leader: u64,
) -> Result<Sr25519Keypair> {
    let step = Step::start("Registering a demo worker, cluster and contract on the dev chain");
    let worker = Sr25519Keypair::generate(&mut rand_core::OsRng);
    let wkey = Public(*worker.public_key().as_bytes());
    let mut last = 0;
    for a in demo_actions(wkey) {
        let r = chain.submit(DevProfile::Gatekeeper, &a).await?;
        last = r["block"].as_u64().unwrap_or(0);
        step.note(&format!("block {last} finalized"));
    }
    let leader_api = nodes
        .iter()
        .find(|n| n.info.id == leader)
        .map(|n| n.info.admin.clone())
        .unwrap_or_else(|| apis[0].clone());
    wait_for(
        nodes,
        Duration::from_secs(60),
        "the cluster to apply the demo blocks",
        || cursor_through(leader_api.clone(), last),
    )
    .await?;
    step.done(&format!(
        "worker {}… registered; applied through block {last}",
        &hex::encode(wkey.0)[..16]
    ));
    Ok(worker)
}

/// `Some` once the node at `api` has fully applied `block`.
async fn cursor_through(api: String, block: u64) -> Option<()> {
    let c = status(&api).await.ok()?.chain?;
    applied_through(&c, block).then_some(())
}

/// Step 5: the demo miner fetches the worker key and the demo contract's key.
async fn fetch_demo_keys(
    apis: &[String],
    ca_bundle: &Path,
    worker: &Sr25519Keypair,
) -> Result<(DemoKey, DemoKey)> {
    let step = Step::start("Demo miner fetching its worker key and a contract key over TLS");
    let miner = MinerClient::new(apis.to_vec(), worker.clone()).with_tls_ca_file(ca_bundle)?;
    let wk = miner
        .fetch(KeyTarget::Worker, None)
        .await
        .context("fetching the worker key")?;
    let ck = miner
        .fetch(KeyTarget::Contract(ContractId(DEMO_CONTRACT)), None)
        .await
        .context("fetching the contract key")?;
    step.done("signatures verified, envelopes opened");
    Ok((DemoKey::from(&wk), DemoKey::from(&ck)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> NodeInfo {
        node_info(id, 9944, &Path::new("/d").join(format!("node-{id}"))).unwrap()
    }

    #[test]
    fn node_ports_follow_the_base_port() {
        assert_eq!(
            node(2),
            NodeInfo {
                id: 2,
                raft: "127.0.0.1:9956".into(),
                api: "127.0.0.1:9966".into(),
                metrics: "127.0.0.1:9976".into(),
                admin: "127.0.0.1:9986".into(),
                data: "/d/node-2/data".into(),
                log: "/d/node-2/node.log".into(),
            }
        );
        assert_eq!(
            format!("{:#}", node_info(1, 65_505, Path::new("/d")).unwrap_err()),
            "--base-port is too high for these ports: out of range integral type conversion attempted"
        );
        assert!(node_info(9, 65_535 - 49, Path::new("/d")).is_ok());
        assert!(node_info(9, 65_535 - 48, Path::new("/d")).is_err());
    }

    #[test]
    fn node_config_is_toml_for_a_development_node() {
        let text = node_config(&node(1), "ws://127.0.0.1:9944", &certs(Path::new("/d"), 1));
        assert!(text.starts_with("# written by `gatekeeper devnet`\n"));
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["node_id"].as_integer(), Some(1));
        assert_eq!(v["data_dir"].as_str(), Some("/d/node-1/data"));
        assert_eq!(v["raft_listen"].as_str(), Some("127.0.0.1:9955"));
        assert_eq!(v["api_listen"].as_str(), Some("127.0.0.1:9965"));
        assert_eq!(v["metrics_listen"].as_str(), Some("127.0.0.1:9975"));
        assert_eq!(v["admin_listen"].as_str(), Some("127.0.0.1:9985"));
        assert_eq!(v["tls_ca_file"].as_str(), Some("/d/certs/ca.pem"));
        assert_eq!(v["tls_cert_file"].as_str(), Some("/d/certs/node-1.pem"));
        assert_eq!(v["tls_key_file"].as_str(), Some("/d/certs/node-1.key"));
        assert!(v.get("plaintext").is_none());
        assert_eq!(v["mode"].as_str(), Some("development"));
        assert_eq!(v["chain_url"].as_str(), Some("ws://127.0.0.1:9944"));
        assert_eq!(v["chain_profile"].as_str(), Some("gatekeeper"));
        assert_eq!(v["election_timeout_min_ms"].as_integer(), Some(500));
        assert_eq!(v["election_timeout_max_ms"].as_integer(), Some(1000));
        assert_eq!(v["heartbeat_interval_ms"].as_integer(), Some(150));
    }

    #[test]
    fn every_node_is_an_initial_voter() {
        let ms = init_members(&[node(1), node(2)]);
        assert_eq!(
            ms.iter()
                .map(|m| (m.node_id, m.raft_address.as_str(), m.api_address.as_str()))
                .collect::<Vec<_>>(),
            [
                (1, "127.0.0.1:9955", "127.0.0.1:9965"),
                (2, "127.0.0.1:9956", "127.0.0.1:9966"),
            ]
        );
    }

    #[test]
    fn only_an_unsealed_node_has_a_view_of_the_genesis() {
        let seal = |state: pb::SealState| {
            Some(pb::SealStatus {
                state: state as i32,
                ..Default::default()
            })
        };
        let mut s = pb::StatusResponse {
            leader_id: Some(2),
            epochs: vec![
                pb::EpochInfo {
                    epoch: 0,
                    master_public_key: vec![1],
                    ..Default::default()
                },
                pb::EpochInfo {
                    epoch: 1,
                    master_public_key: vec![2],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(unsealed_view(&s), None);
        s.seal = seal(pb::SealState::Unsealing);
        assert_eq!(unsealed_view(&s), None);
        s.seal = seal(pb::SealState::Unsealed);
        assert_eq!(
            unsealed_view(&s),
            Some(UnsealedView {
                leader: Some(2),
                newest_epoch: Some((1, vec![2])),
            })
        );
        s.leader_id = None;
        s.epochs.clear();
        assert_eq!(
            unsealed_view(&s),
            Some(UnsealedView {
                leader: None,
                newest_epoch: None,
            })
        );
    }

    #[test]
    fn a_block_is_applied_once_the_cursor_is_past_it_or_complete_on_it() {
        let c = |block, complete| pb::ChainStatus {
            cursor_block: block,
            cursor_block_complete: complete,
            ..Default::default()
        };
        assert!(!applied_through(&c(4, true), 5));
        assert!(!applied_through(&c(5, false), 5));
        assert!(applied_through(&c(5, true), 5));
        assert!(applied_through(&c(6, false), 5));
    }

    #[test]
    fn the_demo_registers_the_worker_then_its_cluster_then_the_contract() {
        let w = Public([7; 32]);
        let [register, cluster, contract] = demo_actions(w);
        assert_eq!(
            register,
            Action::RegisterWorker {
                worker: w,
                provider: Some(devchain::runtime::AttestationProvider::Root),
                confidence_level: 1,
            }
        );
        assert_eq!(
            cluster,
            Action::CreateCluster {
                cluster: H256(DEMO_CLUSTER),
                workers: vec![w],
            }
        );
        assert_eq!(
            contract,
            Action::InstantiateContract {
                contract: H256(DEMO_CONTRACT),
                cluster: H256(DEMO_CLUSTER),
            }
        );
    }

    #[test]
    fn the_summary() {
        let s = Summary {
            chain_url: "ws://127.0.0.1:9944".into(),
            dir: "/d".into(),
            nodes: vec![node(1), node(2)],
            genesis: Genesis {
                leader: 2,
                epoch: 1,
                master: vec![0xaa, 0xbb],
            },
            worker: [0x11; 32],
            worker_key: DemoKey {
                public: [0x22; 32],
                epoch: 1,
                served_by: 2,
            },
            contract_key: DemoKey {
                public: [0x33; 32],
                epoch: 1,
                served_by: 1,
            },
        };
        let (w, wk, ck) = ("11".repeat(32), "22".repeat(32), "33".repeat(32));
        let (contract, cluster) = ("c2".repeat(32), "c1".repeat(32));
        assert_eq!(
            summary_lines(&s),
            [
                "".to_string(),
                "Gatekeeper devnet is up".into(),
                "  chain          ws://127.0.0.1:9944 (gatekeeper profile)".into(),
                "  node 1         api 127.0.0.1:9965  admin 127.0.0.1:9985  raft 127.0.0.1:9955  metrics http://127.0.0.1:9975/metrics".into(),
                "  node 2         api 127.0.0.1:9966  admin 127.0.0.1:9986  raft 127.0.0.1:9956  metrics http://127.0.0.1:9976/metrics  (leader)".into(),
                "  epoch          1, master public key aabb".into(),
                format!("  demo worker    {w}"),
                format!("  worker key     {wk} (epoch 1, served by node 2)"),
                format!("  contract key   {ck} (contract {contract}, cluster {cluster})"),
                "  data and logs  /d".into(),
                "                 node 1: /d/node-1/node.log".into(),
                "                 node 2: /d/node-2/node.log".into(),
                "                 chain: /d/chain".into(),
                "".into(),
                "Try:".into(),
                "  export GATEKEEPER_ADMIN_CA=/d/certs/ca.pem GATEKEEPER_ADMIN_CERT=/d/certs/operator.pem GATEKEEPER_ADMIN_KEY=/d/certs/operator.key".into(),
                "  gatekeeper admin --endpoint 127.0.0.1:9985 status".into(),
                format!(
                    "  gatekeeper miner fetch-key --endpoint 127.0.0.1:9965 --endpoint 127.0.0.1:9966 --worker-key-file /d/demo-worker.json --ca /d/certs/miner-bundle.pem --kind contract --id {contract}"
                ),
                format!(
                    "  gatekeeper-devchain emit --url ws://127.0.0.1:9944 slash-worker --worker {w} --reason demo"
                ),
            ]
        );
    }

    #[test]
    fn prepare_dir_wipes_only_a_previous_devnet() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("devnet");
        prepare_dir(&dir).unwrap();
        assert!(dir.join(MARKER).exists());
        std::fs::write(dir.join("leftover"), "x").unwrap();
        prepare_dir(&dir).unwrap();
        assert!(!dir.join("leftover").exists());

        let other = tmp.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("precious"), "x").unwrap();
        let e = prepare_dir(&other).unwrap_err();
        assert!(e
            .to_string()
            .ends_with("is not a devnet directory; choose another --dir"));
        assert!(other.join("precious").exists());
        // An empty directory is fine.
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        prepare_dir(&empty).unwrap();
    }
}
