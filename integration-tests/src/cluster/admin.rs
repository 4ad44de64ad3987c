//! Driving a [`Cluster`]'s nodes through the operator CLI (`gatekeeper admin --endpoint …`), and
//! reading their `/metrics`.

use super::Cluster;
use crate::clients::{Consistency, GetReply, MembersView, PutAck, Status};
use crate::processes::{run_admin, AdminOutput};
use crate::util::{http_get, ADMIN_TIMEOUT, JOIN_TIMEOUT, WAIT};
use std::time::Duration;

impl Cluster {
    /// Run `gatekeeper admin --endpoint <node i's admin listener> <TLS flags> <args…>` with
    /// [`ADMIN_TIMEOUT`].
    pub fn admin(&self, i: u64, args: &[&str]) -> AdminOutput {
        self.admin_timeout(i, args, ADMIN_TIMEOUT)
    }

    /// [`Cluster::admin`] with an explicit timeout.
    pub fn admin_timeout(&self, i: u64, args: &[&str], timeout: Duration) -> AdminOutput {
        run_admin(&self.bin, &self.admin_target(i), args, timeout)
    }

    /// `admin status --json` on node `i`, as raw JSON (every field, also those [`Status`]
    /// leaves out).
    pub fn status_json(&self, i: u64) -> Result<serde_json::Value, String> {
        let out = self.admin(i, &["status", "--json"]);
        if !out.success() {
            return Err(out.describe());
        }
        serde_json::from_str(&out.stdout).map_err(|e| e.to_string())
    }

    /// Fetches `worker`'s worker key from node `i` alone, in one attempt, over TLS with the
    /// cluster's CA (the miner SDK): its public key, or the refusal as text.
    pub fn worker_key(&self, i: u64, worker: &keyring::Sr25519Keypair) -> Result<[u8; 32], String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let m = gatekeeper_client::MinerClient::new(
                vec![self.api_addr(i).to_string()],
                worker.clone(),
            )
            .with_retry(gatekeeper_client::RetryPolicy::once())
            .with_tls_ca_file(self.ca_file().ok_or("this cluster runs without TLS")?)
            .map_err(|e| e.to_string())?;
            m.fetch(keyring::sign::KeyTarget::Worker, None)
                .await
                .map(|k| *k.keypair.public_key().as_bytes())
                .map_err(|e| e.to_string())
        })
    }

    /// `admin status --json` on node `i`.
    pub fn status(&self, i: u64) -> Result<Status, String> {
        self.admin(i, &["status", "--json"]).json()
    }

    /// Registers a fresh worker through node 1's development path (`admin dev register-worker`)
    /// and waits, up to `timeout`, until nodes `ids` are unsealed. Returns the worker's key pair
    /// and the cluster id, to sign key requests with.
    pub fn dev_worker(&self, ids: &[u64], timeout: Duration) -> (keyring::Sr25519Keypair, Vec<u8>) {
        let w = keyring::Sr25519Keypair::generate(&mut rand_core::OsRng);
        let worker = hex::encode(w.public_key().as_bytes());
        let out = self.admin(1, &["dev", "register-worker", "--worker", &worker]);
        if !out.success() {
            self.fail(&out.describe());
        }
        let mut gk = Vec::new();
        for &i in ids {
            gk = self.wait_for(&format!("node {i} to unseal"), timeout, || {
                let s = self.status(i)?;
                match (s.seal_status.as_str(), s.gatekeeper_id) {
                    ("unsealed", Some(id)) => hex::decode(id).map_err(|e| e.to_string()),
                    (seal, _) => Err(seal.to_string()),
                }
            });
        }
        (w, gk)
    }

    /// `admin members --json` on node `i`.
    pub fn members(&self, i: u64) -> Result<MembersView, String> {
        self.admin(i, &["members", "--json"]).json()
    }

    /// `admin put KEY VALUE` on node `i` (one attempt).
    pub fn put(&self, i: u64, key: &str, value: &str) -> Result<PutAck, String> {
        self.admin(i, &["put", key, value]).json()
    }

    /// `admin put` on node `i`, retried until it succeeds (bounded by [`WAIT`]). Retrying can apply
    /// the same key/value twice: use [`Cluster::put`] where that matters.
    pub fn put_ok(&self, i: u64, key: &str, value: &str) -> PutAck {
        self.wait_for(
            &format!("`put {key} {value}` on node {i} to commit"),
            WAIT,
            || self.put(i, key, value),
        )
    }

    /// `admin get KEY --consistency C` on node `i` (one attempt).
    pub fn get(&self, i: u64, key: &str, consistency: Consistency) -> Result<GetReply, String> {
        self.admin(i, &["get", key, "--consistency", consistency.as_str()])
            .json()
    }

    /// Wait until node `i` reads `key` (under `consistency`) as `expected`.
    pub fn wait_value(
        &self,
        i: u64,
        key: &str,
        consistency: Consistency,
        expected: Option<&str>,
    ) -> GetReply {
        self.wait_for(
            &format!(
                "node {i} to read {key:?} = {expected:?} ({})",
                consistency.as_str()
            ),
            WAIT,
            || {
                let r = self.get(i, key, consistency)?;
                if r.value.as_deref() == expected {
                    Ok(r)
                } else {
                    Err(format!("read {r:?}"))
                }
            },
        )
    }

    /// `admin init --member …` on node `via` with `members` as the initial voters.
    pub fn init(&self, via: u64, members: &[u64]) -> Result<(), String> {
        let specs: Vec<String> = members
            .iter()
            .map(|&m| format!("{m}={}={}", self.raft_addr(m), self.api_addr(m)))
            .collect();
        let mut args = vec!["init"];
        for s in &specs {
            args.push("--member");
            args.push(s);
        }
        let out = self.admin(via, &args);
        if out.success() {
            Ok(())
        } else {
            Err(out.describe())
        }
    }

    /// `admin join` of node `id`, sent to node `via`.
    pub fn join(&self, via: u64, id: u64) -> Result<(), String> {
        let ids = id.to_string();
        let out = self.admin_timeout(
            via,
            &[
                "join",
                "--node-id",
                &ids,
                "--raft-address",
                self.raft_addr(id),
                "--api-address",
                self.api_addr(id),
            ],
            JOIN_TIMEOUT,
        );
        if out.success() {
            Ok(())
        } else {
            Err(out.describe())
        }
    }

    /// `admin leave --node-id id`, sent to node `via`.
    pub fn leave(&self, via: u64, id: u64) -> Result<(), String> {
        let ids = id.to_string();
        let out = self.admin(via, &["leave", "--node-id", &ids]);
        if out.success() {
            Ok(())
        } else {
            Err(out.describe())
        }
    }

    /// `admin fault --isolate` (true) or `--heal` (false) on node `i`.
    pub fn fault(&self, i: u64, isolate: bool) -> Result<(), String> {
        let flag = if isolate { "--isolate" } else { "--heal" };
        let out = self.admin(i, &["fault", flag]);
        if out.success() {
            Ok(())
        } else {
            Err(out.describe())
        }
    }

    /// `GET /metrics` from node `i` (needs [`Opts::metrics`](super::Opts::metrics)): the exposition
    /// text.
    pub fn metrics(&self, i: u64) -> Result<String, String> {
        let addr = self
            .node(i)
            .metrics_addr
            .clone()
            .ok_or("this cluster runs without metrics listeners")?;
        http_get(&addr, "/metrics")
    }

    /// The value of metric `name` (a line `name value`) at node `i`.
    pub fn metric(&self, i: u64, name: &str) -> Result<f64, String> {
        let text = self.metrics(i)?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
            })
            .ok_or_else(|| format!("no metric {name} in:\n{text}"))
    }
}
