//! The Gatekeeper node as a library; `src/main.rs` only parses the command line and calls in here.
//!
//! Where each concern lives:
//!
//! | module | what it holds | IO? |
//! |---|---|---|
//! | [`error`] | the one error catalog ([`error::ErrorCode`]) and its one mapping to a gRPC status | no |
//! | [`clock`] | the only reader of the wall clock; everything that decides takes `now` | reads the clock |
//! | [`config`] | node settings (TOML + `GATEKEEPER_*` environment) | reads the file |
//! | [`attestation`] | the attestation policy and the mapping of wire evidence onto it | no |
//! | [`keyfile`] | reading the sr25519 key files `gatekeeper keygen` writes | reads the file |
//! | [`tls`] | transport security: PEM loading, the three listener policies, hot reload, the capped accept loop with peer identities, TLS clients, rcgen issuance | reads the files; sockets |
//! | [`replay`] | the nonce window (timestamps and used nonces) | no |
//! | [`epochs`] | read-only views over the replicated epochs: active epochs, dealing contexts | no |
//! | [`enclave`] | the enclave boundary: secrets, shares, sealing (software backend) | its own directory |
//! | [`issuance`] | **who gets a key**: `authorize` runs every KeyService check of docs/api.md in order | no |
//! | [`admission`] | **who may use the cluster listener**: `admit` maps a verified client certificate to a member (pinned key, or `node-<id>` valid for its Raft host) and checks the id the message claims | no |
//! | [`peer`] | **who gets a share**: `authorize` for FetchShare, and the FetchShare client | client only |
//! | [`keeper`] | the master-key lifecycle: a pure planner (`plan`) and the runtime that executes its steps | runtime only |
//! | [`operator`] | **what an operator may ask**: the checks behind AdminService (init, join, leave, rotate, dev events, canaries, fault hooks) | no |
//! | [`chain`] | the chain watcher (subxt) and how its view is reported | yes |
//! | [`service`] | thin tonic adapters for Key, Peer and Admin services: decode, call a core, map the error | yes |
//! | [`health`] | **whether this node can serve keys**: `readiness` over facts read from the replica and enclave; what gRPC health, `/readyz` and `gatekeeper health` report | reads state only |
//! | [`backup`] | the backup file: manifest, checks of the snapshot bytes | reads/writes the given streams |
//! | [`metrics`] | `/metrics`, `/livez`, `/readyz` | yes |
//! | [`traces`] | OpenTelemetry traces over OTLP, off unless configured: RPC server spans, internal spans | exports |
//! | [`logs`] | INFO lines for state changes (epochs, rotations, members); openraft's repeats held back | logs only |
//! | [`node`] | wiring: enclave, replica, listeners, keeper, watcher, shutdown | yes |
//! | [`cli`] | the `admin`, `miner`, `keygen`, `certs` and `devnet` subcommands | yes |
//!
//! The decisions (`issuance::authorize`, `peer::authorize`, `keeper::plan`, the attestation
//! policy) are pure functions of their inputs and `now`, unit-tested without sockets, processes or
//! sleeps, in the manner of openraft's engine/runtime split.
//!
//! **No import cycles.** No top-level module imports another that imports it back, directly or
//! through a third module. The order, from the bottom: `error`, `clock`, `keyfile`; the leaves
//! `replay`, `attestation`, `enclave`, `tls`, `chain`; `config` (which names chain settings);
//! `epochs`, `health`; the decisions `admission`, `issuance`, `peer`, `keeper`, `operator`; then `service`, `metrics`,
//! `node`, `cli`. A unit test (`tests::no_cycles`) reads the sources and keeps this true. Inside a
//! module directory, children import their siblings, never the parent's re-exports (e.g.
//! `keeper/runtime.rs` imports `keeper/plan.rs`).

#![forbid(unsafe_code)]

pub mod admission;
pub mod attestation;
pub mod audit;
pub mod backup;
pub mod chain;
pub mod cli;
pub mod clock;
pub mod config;
pub mod enclave;
pub mod epochs;
pub mod error;
pub mod health;
pub mod issuance;
pub mod keeper;
pub mod keyfile;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod operator;
pub mod peer;
pub mod replay;
pub mod service;
pub mod tls;
pub mod traces;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Top-level module of a source file under src/.
    fn top_module(rel: &Path) -> Option<String> {
        let first = rel.components().next()?.as_os_str().to_str()?.to_string();
        let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        (name != "lib" && name != "main").then_some(name)
    }

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// The `crate::<module>` references of every top-level module.
    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![];
        sources(&src, &mut files);
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in files {
            let Some(from) = top_module(f.strip_prefix(&src).unwrap()) else {
                continue;
            };
            // Doc links are not imports: only code lines count.
            let text: String = std::fs::read_to_string(&f)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let deps = g.entry(from.clone()).or_default();
            for part in text.split("crate::").skip(1) {
                // `crate::a::…` or `crate::{a, b::c, …}`.
                let names: Vec<String> = match part.strip_prefix('{') {
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap_or_default()
                        .split(',')
                        .map(|n| n.trim().split("::").next().unwrap_or_default().to_string())
                        .collect(),
                    None => vec![part
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect()],
                };
                for name in names {
                    if !name.is_empty() && name != from && name != "self" {
                        deps.insert(name);
                    }
                }
            }
        }
        g
    }

    #[test]
    fn no_cycles() {
        let g = graph();
        assert!(g.len() >= 10, "module graph looks empty: {g:?}");
        // Depth-first search for a back edge.
        fn visit(
            n: &str,
            g: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) {
            if done.contains(n) {
                return;
            }
            if let Some(i) = path.iter().position(|p| p == n) {
                panic!("import cycle: {} -> {n}", path[i..].join(" -> "));
            }
            path.push(n.to_string());
            for d in g.get(n).into_iter().flatten() {
                visit(d, g, path, done);
            }
            path.pop();
            done.insert(n.to_string());
        }
        let mut done = BTreeSet::new();
        for n in g.keys() {
            visit(n, &g, &mut vec![], &mut done);
        }
    }

    #[test]
    fn every_path_the_docs_cite_exists() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let dirs = [
            "proto/",
            "keyring/",
            "raft/",
            "client/",
            "gatekeeper/",
            "devchain/",
            "integration-tests/",
            "deploy/",
            "docs/",
            ".ci/",
        ];
        let mut docs = vec![root.join("README.md")];
        for e in std::fs::read_dir(root.join("docs")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "md") {
                docs.push(p);
            }
        }
        let mut missing = vec![];
        for d in docs {
            let text = std::fs::read_to_string(&d).unwrap();
            for (i, quoted) in text.split('`').enumerate() {
                if i % 2 == 0 || !dirs.iter().any(|p| quoted.starts_with(p)) {
                    continue;
                }
                let path = quoted.split([' ', ':', '#', '(']).next().unwrap();
                // Signing contexts (`gatekeeper/v1/...`) are not paths.
                if path.starts_with("gatekeeper/v1/")
                    || path.contains('*')
                    || path.contains('<')
                    || path.contains('{')
                {
                    continue;
                }
                if !root.join(path).exists() {
                    missing.push(format!("{}: {path}", d.display()));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "docs cite paths that do not exist: {missing:#?}"
        );
    }

    #[test]
    fn the_binary_is_a_thin_dispatcher() {
        let main = include_str!("main.rs");
        assert!(
            main.lines().count() < 100,
            "src/main.rs grew past 100 lines"
        );
        assert!(!main.contains("\nmod "), "src/main.rs declares modules");
    }
}
