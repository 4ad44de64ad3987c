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
//! `base + 10 + i`, API on `base + 20 + i`, metrics on `base + 30 + i`.

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
    /// First port: the chain listens on it, nodes on base+10+i (Raft), base+20+i (API) and
    /// base+30+i (metrics).
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
const DEMO_CLUSTER: [u8; 32] = [0xc1; 32];
const DEMO_CONTRACT: [u8; 32] = [0xc2; 32];

struct NodeProc {
    id: u64,
    api: String,
    raft: String,
    metrics: String,
    log: PathBuf,
    child: Child,
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
        println!(
            "✓ {} — {detail} ({:.1}s)",
            self.title,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn fail(self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        println!("✗ {}", self.title);
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

struct NodeAddrs {
    id: u64,
    raft: String,
    api: String,
    metrics: String,
    data: PathBuf,
}

fn node_config(n: &NodeAddrs, chain_url: &str) -> String {
    format!(
        "# written by `gatekeeper devnet`\n\
         node_id = {id}\n\
         data_dir = {data:?}\n\
         raft_listen = {raft:?}\n\
         api_listen = {api:?}\n\
         metrics_listen = {metrics:?}\n\
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
        metrics = n.metrics,
    )
}

async fn admin(api: &str) -> Result<AdminServiceClient<tonic::transport::Channel>> {
    crate::cli::admin::connect(api, Duration::from_secs(20)).await
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
                    n.id,
                    n.log.display(),
                    log_tail(&n.log, 20)
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
    let mut nodes: Vec<NodeProc> = vec![];
    let result = demo(&args, &dir, &mut nodes).await;
    let outcome = match result {
        Ok(chain) => {
            if args.exit_after_demo {
                println!("--exit-after-demo: stopping");
            } else {
                println!("\nRunning. Press Ctrl-C to stop every node and the chain.");
                crate::node::shutdown_signal().await;
                println!("\nStopping…");
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
        println!("Stopped. Logs and data remain in {}", dir.display());
    }
    outcome
}

async fn demo(
    args: &DevnetArgs,
    dir: &Path,
    nodes: &mut Vec<NodeProc>,
) -> Result<devchain::DevChain> {
    // 1. The chain.
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

    // 2. The nodes.
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let step = Step::start(&format!("Starting {} gatekeeper nodes", args.nodes));
    for id in 1..=args.nodes {
        let ndir = dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&ndir)?;
        let log = ndir.join("node.log");
        let logf = std::fs::File::create(&log)?;
        let addrs = NodeAddrs {
            id,
            raft: format!("127.0.0.1:{}", port(args.base_port, 10 + id)?),
            api: format!("127.0.0.1:{}", port(args.base_port, 20 + id)?),
            metrics: format!("127.0.0.1:{}", port(args.base_port, 30 + id)?),
            data: ndir.join("data"),
        };
        let config = ndir.join("gatekeeper.toml");
        std::fs::write(&config, node_config(&addrs, &chain.url()))?;
        let mut cmd = Command::new(&exe);
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
        nodes.push(NodeProc {
            id,
            raft: addrs.raft,
            api: addrs.api,
            metrics: addrs.metrics,
            log,
            child,
        });
        step.note(&format!("node {id} started"));
    }
    let apis: Vec<String> = nodes.iter().map(|n| n.api.clone()).collect();
    let up = wait_for(nodes, Duration::from_secs(30), "the nodes' APIs", || {
        let apis = apis.clone();
        async move {
            for a in &apis {
                status(a).await.ok()?;
            }
            Some(())
        }
    })
    .await;
    if let Err(e) = up {
        step.fail();
        return Err(e);
    }
    step.done(&format!("APIs on {}", apis.join(", ")));

    // 3. Init and genesis.
    let step = Step::start("Initialising the cluster and dealing the genesis master key");
    let members: Vec<pb::InitMember> = nodes
        .iter()
        .map(|n| pb::InitMember {
            node_id: n.id,
            raft_address: n.raft.clone(),
            api_address: n.api.clone(),
        })
        .collect();
    let init = admin(&nodes[0].api)
        .await?
        .init(pb::InitRequest {
            members,
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
        || {
            let apis = apis.clone();
            async move {
                let mut leader = None;
                let mut master = None;
                for a in &apis {
                    let s = status(a).await.ok()?;
                    let seal = s.seal.as_ref()?;
                    if seal.state != pb::SealState::Unsealed as i32 {
                        return None;
                    }
                    leader = s.leader_id;
                    master = s
                        .epochs
                        .last()
                        .map(|e| (e.epoch, e.master_public_key.clone()));
                }
                Some((leader?, master?))
            }
        },
    )
    .await;
    let (leader, (epoch, master)) = match unsealed {
        Ok(v) => v,
        Err(e) => {
            step.fail();
            return Err(e);
        }
    };
    step.done(&format!(
        "gatekeeper id {}…, threshold {} of {}, leader node {leader}",
        &hex::encode(&init.gatekeeper_id)[..16],
        init.threshold,
        nodes.len()
    ));

    // 4. The demo worker on chain.
    let step = Step::start("Registering a demo worker, cluster and contract on the dev chain");
    let worker = Sr25519Keypair::generate(&mut rand_core::OsRng);
    let wkey = Public(*worker.public_key().as_bytes());
    let mut last = 0;
    for a in [
        Action::RegisterWorker {
            worker: wkey,
            provider: Some(devchain::runtime::AttestationProvider::Root),
            confidence_level: 1,
        },
        Action::CreateCluster {
            cluster: H256(DEMO_CLUSTER),
            workers: vec![wkey],
        },
        Action::InstantiateContract {
            contract: H256(DEMO_CONTRACT),
            cluster: H256(DEMO_CLUSTER),
        },
    ] {
        let r = chain.submit(DevProfile::Gatekeeper, &a).await?;
        last = r["block"].as_u64().unwrap_or(0);
        step.note(&format!("block {last} finalized"));
    }
    let leader_api = nodes
        .iter()
        .find(|n| n.id == leader)
        .map(|n| n.api.clone())
        .unwrap_or_else(|| apis[0].clone());
    wait_for(
        nodes,
        Duration::from_secs(60),
        "the cluster to apply the demo blocks",
        || {
            let a = leader_api.clone();
            async move {
                let c = status(&a).await.ok()?.chain?;
                (c.cursor_block > last || (c.cursor_block == last && c.cursor_block_complete))
                    .then_some(())
            }
        },
    )
    .await?;
    step.done(&format!(
        "worker {}… registered; applied through block {last}",
        &hex::encode(wkey.0)[..16]
    ));

    // 5. The demo miner.
    let step = Step::start("Demo miner fetching its worker key and a contract key");
    let mut miner = MinerClient::new(apis.clone(), worker.clone());
    let wk = miner
        .fetch(KeyTarget::Worker, None)
        .await
        .context("fetching the worker key")?;
    let ck = miner
        .fetch(KeyTarget::Contract(ContractId(DEMO_CONTRACT)), None)
        .await
        .context("fetching the contract key")?;
    step.done("signatures verified, envelopes opened");

    // 6. Summary.
    println!();
    println!("Gatekeeper devnet is up");
    println!("  chain          {} (gatekeeper profile)", chain.url());
    for n in nodes.iter() {
        println!(
            "  node {}         api {}  raft {}  metrics http://{}/metrics{}",
            n.id,
            n.api,
            n.raft,
            n.metrics,
            if n.id == leader { "  (leader)" } else { "" }
        );
    }
    println!(
        "  epoch          {epoch}, master public key {}",
        hex::encode(&master)
    );
    println!("  demo worker    {}", hex::encode(wkey.0));
    println!(
        "  worker key     {} (epoch {}, served by node {})",
        hex::encode(wk.keypair.public_key().as_bytes()),
        wk.epoch,
        wk.served_by
    );
    println!(
        "  contract key   {} (contract {}, cluster {})",
        hex::encode(ck.keypair.public_key().as_bytes()),
        hex::encode(DEMO_CONTRACT),
        hex::encode(DEMO_CLUSTER)
    );
    println!("  data and logs  {}", dir.display());
    for n in nodes.iter() {
        println!("                 node {}: {}", n.id, n.log.display());
    }
    println!("                 chain: {}", dir.join("chain").display());
    println!();
    println!("Try:");
    println!("  gatekeeper admin --endpoint {} status", apis[0]);
    println!(
        "  gatekeeper-devchain emit --url {} slash-worker --worker {} --reason demo",
        chain.url(),
        hex::encode(wkey.0)
    );
    Ok(chain)
}
