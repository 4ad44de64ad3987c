//! No peer message can break a node: real `gatekeeper node` processes receive, over raw
//! `gatekeeper.raft.v1` clients, what a peer holding a valid member certificate could send —
//! garbage and forged snapshots, AppendEntries rewriting committed entries, malformed votes, a
//! flood of idle connections — and must refuse it, keep serving, and restart cleanly. Also: the
//! data dir is private (`0700`/`0600`) and loose modes are tightened at start.
//!
//! Every wait is bounded; failures print the tail of every node's logs and keep the cluster
//! directory.

use gatekeeper_integration_tests::{Cluster, Consistency, Opts, WAIT};
use gatekeeper_proto::raft::v1 as rpb;
use rpb::raft_service_client::RaftServiceClient;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A raw RaftService client to node `i`, presenting member `as_node`'s certificate, as that
/// member would hold (call inside a runtime). The cluster listener admits a message only if the
/// node it claims to come from is the certificate's, so tests send as the node they claim.
fn raft_client(c: &Cluster, i: u64, as_node: u64) -> RaftServiceClient<Channel> {
    let ch = c
        .raft_target(i, as_node)
        .endpoint()
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    RaftServiceClient::new(ch)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20)
}

fn vote(term: u64, node_id: u64, committed: bool) -> rpb::Vote {
    rpb::Vote {
        leader_id: Some(rpb::LeaderId { term, node_id }),
        committed,
    }
}

fn log_id(term: u64, node_id: u64, index: u64) -> rpb::LogId {
    rpb::LogId {
        term,
        node_id,
        index,
    }
}

fn blank(l: rpb::LogId) -> rpb::Entry {
    rpb::Entry {
        log_id: Some(l),
        payload: Some(rpb::entry::Payload::Blank(rpb::Blank {})),
    }
}

/// Asserts that `r` is an INVALID_ARGUMENT whose message contains `says`.
fn expect_refused<T: std::fmt::Debug>(
    c: &Cluster,
    what: &str,
    r: Result<T, tonic::Status>,
    says: &str,
) {
    match r {
        Ok(v) => c.fail(&format!(
            "{what}: accepted ({v:?}), expected INVALID_ARGUMENT"
        )),
        Err(s) if s.code() == Code::InvalidArgument && s.message().contains(says) => {
            eprintln!("{what}: refused as expected: {}", s.message());
        }
        Err(s) => c.fail(&format!(
            "{what}: expected INVALID_ARGUMENT saying {says:?}, got {:?}: {}",
            s.code(),
            s.message()
        )),
    }
}

/// The follower keeps working: a write through it commits, it reads it back linearizably, and
/// it is still a follower of `leader` below the forged term.
fn keeps_serving(c: &Cluster, f: u64, leader: u64, below_term: u64, tag: &str) {
    let key = format!("after-{tag}");
    c.put_ok(f, &key, tag);
    let r = c.wait_for(&format!("a linearizable read on node {f}"), WAIT, || {
        c.get(f, &key, Consistency::Linearizable)
    });
    assert_eq!(r.value.as_deref(), Some(tag), "read after {tag}: {r:?}");
    let s = c.status(f).unwrap_or_else(|e| c.fail(&e));
    if s.role != "follower" || s.term >= below_term || s.leader_id.is_none() {
        c.fail(&format!(
            "after {tag}, node {f} is not a follower below term {below_term}: {s:?} \
             (leader was {leader})"
        ));
    }
}

/// The snapshot file of node `i` (its single latest one), as JSON: its header (`format`,
/// `meta`) with the data that follows it as `data` (design.md §10.1).
fn snapshot_file(c: &Cluster, i: u64) -> serde_json::Value {
    let dir = c.data_dir(i).join("snapshots");
    let path = fs::read_dir(&dir)
        .unwrap_or_else(|e| c.fail(&format!("read {}: {e}", dir.display())))
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snapshot-"))
        })
        .unwrap_or_else(|| c.fail(&format!("no snapshot file in {}", dir.display())));
    let bytes = fs::read(&path).unwrap();
    let rest = bytes
        .strip_prefix(b"GKSNAPFILE/4 ".as_slice())
        .unwrap_or_else(|| {
            c.fail(&format!(
                "{} is not a format-4 snapshot file",
                path.display()
            ))
        });
    let end = rest.iter().position(|&b| b == b'\n').unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&rest[..end]).unwrap();
    v["data"] = String::from_utf8(rest[end + 1..].to_vec()).unwrap().into();
    v
}

fn json_log_id(v: &serde_json::Value) -> rpb::LogId {
    log_id(
        v["leader_id"]["term"].as_u64().unwrap(),
        v["leader_id"]["node_id"].as_u64().unwrap(),
        v["index"].as_u64().unwrap(),
    )
}

/// Snapshot data framed as the snapshot format (header, lengths, SHA-256) around `body`.
fn framed(body: &[u8]) -> Vec<u8> {
    framed_with(body, b"")
}

/// [`framed`] with a certificate after the body.
fn framed_with(body: &[u8], cert: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "GKSNAP/2 {} {} {}\n",
        hex::encode(Sha256::digest(body)),
        body.len(),
        cert.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(cert);
    out
}

/// The body and the certificate of snapshot data in the snapshot format.
fn split_snapshot(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let nl = data.iter().position(|&b| b == b'\n').unwrap();
    let header = std::str::from_utf8(&data[..nl]).unwrap();
    let body_len: usize = header.split(' ').nth(2).unwrap().parse().unwrap();
    let rest = &data[nl + 1..];
    (rest[..body_len].to_vec(), rest[body_len..].to_vec())
}

/// Chunks of a snapshot stream: `data` in 64 KiB pieces, the header on the first, `done` on
/// the last (unless `done` is false).
fn chunks(header: rpb::SnapshotHeader, data: &[u8], done: bool) -> Vec<rpb::SnapshotChunk> {
    let mut out = Vec::new();
    let mut header = Some(header);
    let parts: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(64 << 10).collect()
    };
    let n = parts.len();
    let mut offset = 0u64;
    for (k, p) in parts.into_iter().enumerate() {
        out.push(rpb::SnapshotChunk {
            header: header.take(),
            offset,
            data: p.to_vec(),
            done: done && k + 1 == n,
        });
        offset += p.len() as u64;
    }
    out
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        out.push(p.clone());
        let meta = fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            for e in fs::read_dir(&p).unwrap().flatten() {
                stack.push(e.path());
            }
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

// ---------------------------------------------------------------------------------------------

#[test]
fn garbage_and_forged_snapshots_are_refused_and_the_follower_keeps_working_and_restarts() {
    let mut c = Cluster::start(
        3,
        Opts {
            snapshot_logs_since_last: Some(20),
            ..Opts::default()
        },
    );
    let rt = runtime();
    let leader = c.leader();
    for k in 0..30 {
        c.put_ok(leader, &format!("s-{k}"), &format!("v{k}"));
    }
    let head = c.put_ok(leader, "s-head", "x").log_index;
    c.wait_converged(&c.ids(), head);
    let f = *c.ids().iter().find(|&&i| i != leader).unwrap();
    let s = c.status(leader).unwrap_or_else(|e| c.fail(&e));
    let term = s.term;

    // A real snapshot of the leader: its data (valid framing and state) and metadata.
    let snap = snapshot_file(&c, leader);
    let real_data = snap["data"].as_str().unwrap().as_bytes().to_vec();
    assert!(real_data.starts_with(b"GKSNAP/2 "), "snapshot data format");
    let real_last = json_log_id(&snap["meta"]["last_log_id"]);
    let membership_log_id = json_log_id(&snap["meta"]["last_membership"]["log_id"]);
    let membership = rpb::Membership {
        configs: vec![rpb::NodeIdSet { node_ids: c.ids() }],
        nodes: c
            .ids()
            .into_iter()
            .map(|i| {
                (
                    i,
                    rpb::Node {
                        raft_address: c.raft_addr(i).to_string(),
                        api_address: c.api_addr(i).to_string(),
                    },
                )
            })
            .collect(),
    };
    // What a member holding the leader's vote could send: a snapshot "from the future" (past
    // this follower's committed index), so only the data checks stand between it and openraft.
    let header = |total_size: u64, last: rpb::LogId| rpb::SnapshotHeader {
        vote: Some(vote(term, leader, true)),
        meta: Some(rpb::SnapshotMeta {
            last_log_id: Some(last),
            last_membership: Some(rpb::StoredMembership {
                log_id: Some(membership_log_id),
                membership: Some(membership.clone()),
            }),
            snapshot_id: "forged".into(),
        }),
        total_size,
        election: vec![],
    };
    let future = log_id(term, leader, head + 1000);
    // Sent as the node the vote names (the cluster listener admits no other sender).
    let send = |chunks: Vec<rpb::SnapshotChunk>| {
        let sender = chunks
            .first()
            .and_then(|c| c.header.as_ref())
            .and_then(|h| h.vote.as_ref())
            .and_then(|v| v.leader_id.as_ref())
            .map_or(leader, |l| l.node_id);
        rt.block_on(async {
            raft_client(&c, f, sender)
                .install_snapshot(tonic::codegen::tokio_stream::iter(chunks))
                .await
        })
    };

    // 1. Random bytes.
    let random: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let r = send(chunks(header(random.len() as u64, future), &random, true));
    expect_refused(&c, "random bytes", r, "not a Gatekeeper snapshot");
    keeps_serving(&c, f, leader, term + 1000, "random");

    // 2. A valid header and truncated data: the stream ends early...
    let half = &real_data[..real_data.len() / 2];
    let r = send(chunks(header(real_data.len() as u64, future), half, true));
    expect_refused(&c, "truncated stream", r, "ended at");
    // ...or never says done...
    let r = send(chunks(header(real_data.len() as u64, future), half, false));
    expect_refused(&c, "stream without done", r, "ended at");
    // ...or announces only what it sends, which the snapshot's own header contradicts.
    let r = send(chunks(header(half.len() as u64, future), half, true));
    expect_refused(&c, "total_size below the header's", r, "total_size");
    keeps_serving(&c, f, leader, term + 1000, "truncated");

    // 3. Oversize: a total above the cap is refused before any data; data beyond total_size too.
    let r = send(chunks(header(3 << 30, future), b"GKSNAP/2 ", false));
    expect_refused(&c, "3 GiB total", r, "exceeds the limit");
    let r = send(chunks(header(10, future), &real_data[..100], true));
    expect_refused(&c, "data beyond total_size", r, "exceeds total_size");
    keeps_serving(&c, f, leader, term + 1000, "oversize");

    // 4. Valid framing (header, length, checksum) around content that is not the state.
    for (name, body) in [
        (
            "json of something else",
            &br#"{"format":1,"hello":"world"}"#[..],
        ),
        ("truncated json", &real_data[real_data.len() / 2..]),
        ("not utf-8", b"\xff\xfe\xfd"),
    ] {
        let data = framed(body);
        let r = send(chunks(header(data.len() as u64, future), &data, true));
        expect_refused(&c, name, r, "does not decode into the state");
    }
    // A flipped bit in the body: the checksum.
    let mut flipped = real_data.clone();
    let at = flipped.len() - split_snapshot(&real_data).1.len() - 3;
    flipped[at] ^= 1;
    let r = send(chunks(header(flipped.len() as u64, future), &flipped, true));
    expect_refused(&c, "flipped bit", r, "checksum");
    keeps_serving(&c, f, leader, term + 1000, "undecodable");

    // 5. A valid snapshot whose metadata lies about it.
    let r = send(chunks(
        header(real_data.len() as u64, future),
        &real_data,
        true,
    ));
    expect_refused(
        &c,
        "metadata not matching the state",
        r,
        "disagrees with its metadata",
    );
    // 5b. The finding this defends against: a member's credentials are enough to send a
    //     snapshot, so a fabricated state with consistent metadata must prove itself. Without
    //     a certificate, with the real snapshot's certificate (for another state), and with a
    //     certificate naming only voters it cannot sign for, it is refused.
    let (real_body, real_cert) = split_snapshot(&real_data);
    assert!(
        !real_cert.is_empty(),
        "the leader's snapshot carries its certificate"
    );
    let cert: serde_json::Value = serde_json::from_slice(&real_cert).unwrap();
    assert!(
        cert["signatures"].as_object().unwrap().len() >= 2,
        "signed by a majority: {cert}"
    );
    let mut state: serde_json::Value = serde_json::from_slice(&real_body).unwrap();
    state["state"]["kv"]["s-0"] = "forged".into();
    state["state"]["operators"] = serde_json::json!({"mallory": "04aa"});
    let forged_at = |last: &rpb::LogId| {
        let mut st = state.clone();
        st["last_applied"] = serde_json::json!({
            "leader_id": {"term": last.term, "node_id": last.node_id},
            "index": last.index,
        });
        serde_json::to_vec(&st).unwrap()
    };
    let fake = forged_at(&future);
    let mut own_cert = cert.clone();
    own_cert["index"] = future.index.into();
    own_cert["digest"] = hex::encode(Sha256::digest(&fake)).into();
    for (name, data, want) in [
        (
            "fabricated state, no certificate",
            framed(&fake),
            "carries no certificate",
        ),
        (
            "fabricated state with the real certificate",
            framed_with(&fake, &real_cert),
            "the certificate is for index",
        ),
        (
            "fabricated state with replayed signatures",
            framed_with(&fake, &serde_json::to_vec(&own_cert).unwrap()),
            "signature does not verify",
        ),
    ] {
        let r = send(chunks(header(data.len() as u64, future), &data, true));
        expect_refused(&c, name, r, want);
    }
    keeps_serving(&c, f, leader, term + 1000, "fabricated");

    // 6. A snapshot that would roll this follower back: below its committed index, from a newer
    //    leader than the committed entry there.
    let mut h = header(real_data.len() as u64, log_id(term + 1, leader, 1));
    h.vote = Some(vote(term + 1, leader, true));
    let r = send(chunks(h, &real_data, true));
    expect_refused(
        &c,
        "rollback",
        r,
        "conflicts with this node's committed entry",
    );
    // 7. A leader's vote naming the follower itself, and an uncommitted one.
    let mut h = header(real_data.len() as u64, real_last);
    h.vote = Some(vote(term, f, true));
    let r = send(chunks(h, &real_data, true));
    expect_refused(&c, "vote naming the receiver", r, "names this node");
    let mut h = header(real_data.len() as u64, real_last);
    h.vote = Some(vote(term, leader, false));
    let r = send(chunks(h, &real_data, true));
    expect_refused(&c, "uncommitted vote", r, "not committed");
    keeps_serving(&c, f, leader, term + 1000, "forged");

    // Nothing staged is left behind.
    let staged: Vec<_> = fs::read_dir(c.data_dir(f).join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".incoming-"))
        .collect();
    assert!(staged.is_empty(), "staged snapshot files left: {staged:?}");

    // The follower restarts cleanly and converges.
    let st = c.stop(f);
    assert!(st.success(), "node {f} exited with {st} on SIGTERM");
    let during = c.put_ok(leader, "s-while-down", "d").log_index;
    c.restart(f);
    let last = c.put_ok(f, "s-after-restart", "r").log_index;
    c.wait_converged(&c.ids(), last.max(during));
    for (k, v) in [("s-0", "v0"), ("s-29", "v29"), ("s-while-down", "d")] {
        let r = c.wait_for(&format!("read {k} on node {f}"), WAIT, || {
            c.get(f, k, Consistency::Linearizable)
        });
        assert_eq!(r.value.as_deref(), Some(v), "{k} on node {f} after restart");
    }
}

#[test]
fn a_member_cannot_act_as_the_leader_of_a_term_it_did_not_win() {
    // The root of the round-3 attack: a follower believed any committed vote of a newer term,
    // so a member's certificate was enough to append what only a leader may (chain blocks,
    // re-dealings, membership changes). Now a new leader must show its vote grants.
    let c = Cluster::start(3, Opts::default());
    let rt = runtime();
    let leader = c.leader();
    let head = c.put_ok(leader, "e-head", "x").log_index;
    c.wait_converged(&c.ids(), head);
    let term = c.status(leader).unwrap_or_else(|e| c.fail(&e)).term;
    let ids = c.ids();
    let mut others = ids.iter().copied().filter(|&i| i != leader);
    let (mallory, victim) = (others.next().unwrap(), others.next().unwrap());
    // Sent with mallory's own certificate, as mallory, claiming it leads term + 1.
    let heartbeat = |grants: Vec<rpb::ElectionGrant>| rpb::AppendEntriesRequest {
        vote: Some(vote(term + 1, mallory, true)),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
        election: grants,
    };
    for (name, grants) in [
        ("no proof", vec![]),
        (
            "grants that are not signatures",
            ids.iter()
                .map(|&n| rpb::ElectionGrant {
                    node_id: n,
                    signature: vec![7; 64],
                })
                .collect(),
        ),
    ] {
        let r = rt.block_on(async {
            raft_client(&c, victim, mallory)
                .append_entries(heartbeat(grants))
                .await
        });
        let want = if name == "no proof" {
            "no proof that node"
        } else {
            "vote grant does not verify"
        };
        expect_refused(&c, name, r, want);
        let s = c.status(victim).unwrap_or_else(|e| c.fail(&e));
        assert_eq!(s.term, term, "{name}: node {victim}'s term moved: {s:?}");
        assert_eq!(
            s.leader_id,
            Some(leader),
            "{name}: node {victim} changed leader"
        );
    }
    // Nor can it collect a proof while the leader is alive: the followers' lease refuses its
    // vote request, and the leader grants none while it leads (its grant and mallory's own
    // made a proof in the next attack round).
    let ask = |to: u64| {
        rt.block_on(async {
            raft_client(&c, to, mallory)
                .vote(rpb::VoteRequest {
                    vote: Some(vote(term + 1, mallory, false)),
                    last_log_id: Some(log_id(term, leader, 1 << 40)),
                })
                .await
        })
    };
    match ask(leader) {
        Err(s)
            if s.code() == Code::FailedPrecondition && s.message().contains("grants no vote") => {}
        other => c.fail(&format!(
            "the leader answered a vote request with {other:?}"
        )),
    }
    match ask(victim) {
        Err(s)
            if s.code() == Code::FailedPrecondition
                && s.message().contains("grants no vote within") => {}
        other => c.fail(&format!(
            "a follower answered a vote request with {other:?}"
        )),
    }
    // The real leader keeps leading and the victim keeps following it.
    keeps_serving(&c, victim, leader, term + 1, "unproven leader");
    let s = c.status(leader).unwrap_or_else(|e| c.fail(&e));
    assert_eq!(
        (s.role.as_str(), s.term),
        ("leader", term),
        "the leader stepped down: {s:?}"
    );
}

/// Node `me`'s Raft listener, played by a member holding that node's certificate: it answers
/// every AppendEntries and every vote request with a newer vote of its own (openraft's leader
/// adopts such a vote, which is a vote for that member, and steps down), in turn one term up,
/// five terms up with the vote "granted" (openraft takes a grant of another vote as a refusal
/// and adopts that vote), and just below the 2^24 terms a follower accepts (a stand-again there
/// would be refused by every follower): found by review.
struct NewerVoteAnswers {
    me: u64,
    /// The highest term seen in a request.
    seen: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
}

impl NewerVoteAnswers {
    /// The newer vote to answer `v` with, and whether to call it granted.
    fn newer(&self, v: Option<&rpb::Vote>) -> (rpb::Vote, bool) {
        let term = v.and_then(|v| v.leader_id.as_ref()).map_or(0, |l| l.term);
        self.seen.fetch_max(term, Ordering::SeqCst);
        match self.answered.fetch_add(1, Ordering::SeqCst) % 3 {
            0 => (vote(term + 1, self.me, false), false),
            1 => (vote(term + 5, self.me, false), true),
            _ => (vote(term + (1 << 24) - 1, self.me, false), false),
        }
    }
}

#[tonic::async_trait]
impl rpb::raft_service_server::RaftService for NewerVoteAnswers {
    async fn append_entries(
        &self,
        r: tonic::Request<rpb::AppendEntriesRequest>,
    ) -> Result<tonic::Response<rpb::AppendEntriesResponse>, tonic::Status> {
        let (v, _) = self.newer(r.get_ref().vote.as_ref());
        Ok(tonic::Response::new(rpb::AppendEntriesResponse {
            result: Some(rpb::append_entries_response::Result::HigherVote(v)),
        }))
    }

    async fn vote(
        &self,
        r: tonic::Request<rpb::VoteRequest>,
    ) -> Result<tonic::Response<rpb::VoteResponse>, tonic::Status> {
        let (v, granted) = self.newer(r.get_ref().vote.as_ref());
        Ok(tonic::Response::new(rpb::VoteResponse {
            vote: Some(v),
            vote_granted: granted,
            last_log_id: None,
            grant: vec![],
        }))
    }

    async fn install_snapshot(
        &self,
        _: tonic::Request<tonic::Streaming<rpb::SnapshotChunk>>,
    ) -> Result<tonic::Response<rpb::InstallSnapshotResponse>, tonic::Status> {
        Err(tonic::Status::unavailable("not taking snapshots"))
    }

    async fn client_write(
        &self,
        _: tonic::Request<rpb::ClientWriteRequest>,
    ) -> Result<tonic::Response<rpb::ClientWriteResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no"))
    }

    async fn read_index(
        &self,
        _: tonic::Request<rpb::ReadIndexRequest>,
    ) -> Result<tonic::Response<rpb::ReadIndexResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no"))
    }
}

/// Three nodes that all applied a first write (key `head`), and their roles: the leader, the
/// member the test plays (mallory) and the other follower (the victim).
fn settled_three(head: &str) -> (Cluster, u64, u64, u64) {
    let c = Cluster::start(3, Opts::default());
    let leader = c.leader();
    let index = c.put_ok(leader, head, "x").log_index;
    c.wait_converged(&c.ids(), index);
    let mut others = c.ids().into_iter().filter(|&i| i != leader);
    let (mallory, victim) = (others.next().unwrap(), others.next().unwrap());
    (c, leader, mallory, victim)
}

/// A member's Raft listener played by the test: `answers` served on node `answers.me`'s Raft
/// address with that node's certificate (the node itself must be stopped).
struct Impostor {
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Impostor {
    fn serve(c: &Cluster, rt: &tokio::runtime::Runtime, answers: NewerVoteAnswers) -> Self {
        let (cert, key) = c.node_cert(answers.me);
        let ca = c.ca_file().expect("TLS cluster");
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                fs::read(cert).unwrap(),
                fs::read(key).unwrap(),
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(
                fs::read(ca).unwrap(),
            ));
        let addr: std::net::SocketAddr = c.raft_addr(answers.me).parse().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(rpb::raft_service_server::RaftServiceServer::new(answers))
                .serve_with_shutdown(addr, async {
                    let _ = stopped.await;
                }),
        );
        Impostor { stop, server }
    }

    /// Stops serving and frees the address (the real node may start again).
    fn stop(self, rt: &tokio::runtime::Runtime) {
        let _ = self.stop.send(());
        rt.block_on(self.server).unwrap().unwrap();
    }
}

/// Attack round 6: a member answered the leader's heartbeats with a newer vote of its own; the
/// leader adopted it (a vote for the member) and stepped down, and the member asked for votes
/// the moment the followers' stickiness window closed, and won, 7 times of 7. Now the leader
/// adopts the term only and stands again at once, its follower grants it (the last leader it
/// followed) and still refuses the member, so the member collects no grant however often it asks.
#[test]
fn a_member_answering_with_newer_votes_cannot_take_the_leadership() {
    let (mut c, leader, mallory, victim) = settled_three("nv-head");
    let rt = runtime();
    let ids = c.ids();
    c.kill9(mallory);
    let seen = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let impostor = Impostor::serve(
        &c,
        &rt,
        NewerVoteAnswers {
            me: mallory,
            seen: seen.clone(),
            answered: answered.clone(),
        },
    );
    // Meanwhile mallory asks both nodes for their votes, in the term above the highest it saw,
    // every 20 ms for 8 s: it needs one grant to win.
    let mut granted = Vec::new();
    let mut refusals = 0u32;
    let end = Instant::now() + Duration::from_secs(8);
    while Instant::now() < end {
        let term = seen.load(Ordering::SeqCst) + 1;
        for to in [leader, victim] {
            let r = rt.block_on(async {
                raft_client(&c, to, mallory)
                    .vote(rpb::VoteRequest {
                        vote: Some(vote(term, mallory, false)),
                        last_log_id: Some(log_id(term - 1, leader, 1 << 40)),
                    })
                    .await
            });
            match r {
                Ok(v) if v.get_ref().vote_granted => granted.push((to, term)),
                _ => refusals += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    impostor.stop(&rt);
    if !granted.is_empty() {
        c.fail(&format!("mallory collected vote grants {granted:?}"));
    }
    assert!(
        answered.load(Ordering::SeqCst) > 0,
        "the leader never sent mallory a message"
    );
    eprintln!(
        "mallory: {refusals} vote requests refused, {} answers with a newer vote sent",
        answered.load(Ordering::SeqCst)
    );
    // The leader heard the answers, stood again rather than adopting them, and leads.
    let log = fs::read_to_string(c.stderr_log(leader)).unwrap();
    assert!(
        log.contains("a peer answered with a newer vote"),
        "the leader never saw a newer vote"
    );
    c.restart(mallory);
    let ack = c.put_ok(victim, "nv-after", "y");
    assert_eq!(ack.leader_id, leader, "leadership moved: {ack:?}");
    c.wait_converged(&ids, ack.log_index);
    let s = c.status(leader).unwrap_or_else(|e| c.fail(&e));
    assert_eq!(s.role, "leader", "{s:?}");
}

/// A proof of election for `candidate` in `term`, signed with the development enclave keys
/// (from their data dirs) of `signers`: what members that all turned would hold.
fn forged_proof(
    c: &Cluster,
    signers: &[u64],
    term: u64,
    candidate: u64,
) -> Vec<rpb::ElectionGrant> {
    use gatekeeper::enclave::Enclave;
    signers
        .iter()
        .map(|&n| {
            let e = gatekeeper::enclave::software::SoftwareEnclave::open_with(
                &c.data_dir(n).join("enclave"),
                n,
                gatekeeper::enclave::software::EvidenceSource::Dev(None),
            )
            .unwrap();
            let m = gatekeeper_raft::election::grant_signing_bytes(term, candidate);
            rpb::ElectionGrant {
                node_id: n,
                signature: e
                    .sign_identity(keyring::sign::SigningPurpose::Command, &m)
                    .0
                    .to_vec(),
            }
        })
        .collect()
}

/// Attack rounds 9 and 10: a member that led went silent, waited for the first honest
/// candidate and asked at once for a higher term; its former followers voted it back every
/// time. A follower now refuses to vote back the leader it followed for ten minimum election
/// timeouts after it fell silent, also when its log refused that leader's entries (round 10:
/// only a follower that accepted them applied the rule). Here mallory holds a (forged) proof of
/// election, the victim's log conflicts with its heartbeat, the real leader is gone, and mallory
/// asks the victim for its vote in the next term once it has been silent past the lease.
#[test]
fn a_follower_does_not_vote_back_its_silent_leader_whose_entries_it_refused() {
    let (mut c, leader, mallory, victim) = settled_three("sl-head");
    let rt = runtime();
    let ids = c.ids();
    let st = c.status(victim).unwrap_or_else(|e| c.fail(&e));
    let (term, last) = (st.term, st.last_log_index.unwrap());
    c.kill9(mallory);
    c.kill9(leader);
    // Mallory's heartbeat as the leader of the next term, whose previous entry the victim lacks.
    let heartbeat = rpb::AppendEntriesRequest {
        vote: Some(vote(term + 1, mallory, true)),
        prev_log_id: Some(log_id(term + 1, mallory, last + 50)),
        entries: vec![],
        leader_commit: None,
        election: forged_proof(&c, &[mallory, victim], term + 1, mallory),
    };
    let r = rt
        .block_on(async {
            raft_client(&c, victim, mallory)
                .append_entries(heartbeat)
                .await
        })
        .unwrap_or_else(|e| c.fail(&format!("heartbeat: {e:?}")))
        .into_inner();
    assert!(
        matches!(
            r.result,
            Some(rpb::append_entries_response::Result::Conflict(_))
        ),
        "the victim answered {:?}",
        r.result
    );
    let silent_at = Instant::now();
    // Past openraft's lease (election_timeout_max, 600 ms), within ten minimum election timeouts
    // (3 s): mallory asks for the victim's vote in the term above the victim's, every 100 ms.
    std::thread::sleep(Duration::from_millis(700));
    let (mut refused_as_silent, mut granted) = (0, Vec::new());
    while silent_at.elapsed() < Duration::from_millis(2600) {
        let t = c.status(victim).unwrap_or_else(|e| c.fail(&e)).term + 1;
        let r = rt.block_on(async {
            raft_client(&c, victim, mallory)
                .vote(rpb::VoteRequest {
                    vote: Some(vote(t, mallory, false)),
                    last_log_id: Some(log_id(t - 1, mallory, last + 1000)),
                })
                .await
        });
        match r {
            Ok(v) if v.get_ref().vote_granted => granted.push(t),
            Ok(_) => {}
            Err(e) if e.message().contains("stopped hearing from its leader") => {
                refused_as_silent += 1
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !granted.is_empty() {
        c.fail(&format!(
            "the victim voted its silent leader back in terms {granted:?}"
        ));
    }
    assert!(
        refused_as_silent > 0,
        "no vote request was refused for the silent leader"
    );
    // The cluster goes on once its nodes are back.
    c.restart(leader);
    c.restart(mallory);
    let ack = c.put_ok(victim, "sl-after", "y");
    c.wait_converged(&ids, ack.log_index);
}

/// Attack round 7: a member answered every candidate's vote request with a vote for itself in
/// the next term; openraft's candidate adopted it (a vote for the member, and the end of its
/// candidacy before the others' grants came back), so no election completed while the member
/// kept answering (node 1 campaigned from term 81 to 101+ without winning), and the adopted
/// votes became the member's grants. Now a candidate takes nothing from a refusal: with the
/// leader gone, the honest majority elects one of its own while the member keeps answering.
#[test]
fn a_member_answering_candidates_with_newer_votes_does_not_stop_an_election() {
    let mut c = Cluster::start(5, Opts::default());
    let rt = runtime();
    let leader = c.leader();
    let head = c.put_ok(leader, "ce-head", "x").log_index;
    c.wait_converged(&c.ids(), head);
    let ids = c.ids();
    let mallory = *ids.iter().find(|&&i| i != leader).unwrap();
    let honest: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|&i| i != leader && i != mallory)
        .collect();
    c.kill9(mallory);
    let answered = Arc::new(AtomicU64::new(0));
    let impostor = Impostor::serve(
        &c,
        &rt,
        NewerVoteAnswers {
            me: mallory,
            seen: Arc::new(AtomicU64::new(0)),
            answered: answered.clone(),
        },
    );
    // The leader goes away; the three honest nodes must elect one of their own.
    c.kill9(leader);
    let new_leader = c.leader_among(&honest);
    let ack = c.put_ok(new_leader, "ce-after", "y");
    c.wait_converged(&honest, ack.log_index);
    impostor.stop(&rt);
    assert!(
        answered.load(Ordering::SeqCst) > 0,
        "no candidate ever asked mallory"
    );
    // Mallory never asked for a vote here: an honest node whose vote names mallory took it from
    // an answer (openraft logs each change of its vote).
    let adopted = format!("-N{mallory}:uncommitted");
    for &i in &honest {
        let log = fs::read_to_string(c.stderr_log(i)).unwrap();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("vote is changing") && l.ends_with(&adopted))
        {
            c.fail(&format!(
                "node {i} adopted mallory's vote from an answer: {l}"
            ));
        }
    }
    let ignored = honest.iter().any(|&i| {
        fs::read_to_string(c.stderr_log(i))
            .unwrap()
            .contains("a vote refusal names a newer vote: not adopting it")
    });
    assert!(ignored, "no candidate saw mallory's newer votes");
    c.restart(mallory);
    c.restart(leader);
    let ack = c.put_ok(new_leader, "ce-all", "z");
    c.wait_converged(&ids, ack.log_index);
}

/// A leader that no operator asked cannot change the membership: followers check each
/// membership entry against the operator's grants in their state (design.md §10.5). Played by a
/// member that won (here: forged, with two members' development enclave keys from their data
/// dirs) a proof of election for a new term and sends a membership entry adding a node no
/// `AuthorizeJoin` named, then one forming the fourth round's veto configuration.
#[test]
fn a_leader_cannot_change_the_membership_without_an_operators_grant() {
    let (c, _, mallory, victim) = settled_three("m-head");
    let rt = runtime();
    let ids = c.ids();
    // A proof of election for mallory in `term`: its own grant and the victim's.
    let proof = |term: u64| forged_proof(&c, &[mallory, victim], term, mallory);
    let nodes = |extra: Option<u64>| {
        let mut m: std::collections::HashMap<u64, rpb::Node> = ids
            .iter()
            .map(|&i| {
                (
                    i,
                    rpb::Node {
                        raft_address: c.raft_addr(i).to_string(),
                        api_address: c.api_addr(i).to_string(),
                    },
                )
            })
            .collect();
        if let Some(x) = extra {
            m.insert(
                x,
                rpb::Node {
                    raft_address: "127.0.0.1:1".into(),
                    api_address: "127.0.0.1:2".into(),
                },
            );
        }
        m
    };
    let set = |v: &[u64]| rpb::NodeIdSet {
        node_ids: v.to_vec(),
    };
    let all = ids.clone();
    for (name, membership) in [
        (
            "a learner no operator authorized",
            rpb::Membership {
                configs: vec![set(&all)],
                nodes: nodes(Some(9)),
            },
        ),
        (
            "a joint configuration giving mallory a veto",
            rpb::Membership {
                configs: vec![set(&all), set(&[mallory])],
                nodes: nodes(None),
            },
        ),
    ] {
        // Settled: the victim follows a leader, and holds the last write. The leader may append
        // (a checkpoint signature, a blank after an election) between the status read and the
        // forged message: then the message no longer fits the victim's log, and it is sent
        // again on the new head.
        let mut before = None;
        for attempt in 0.. {
            let ack = c.put_ok(victim, &format!("m-{}-{attempt}", name.len()), "x");
            c.wait_converged(&ids, ack.log_index);
            let st = c.status(victim).unwrap_or_else(|e| c.fail(&e));
            let (term, last) = (st.term, st.last_log_index.unwrap());
            let leader = st.leader_id.unwrap();
            let req = rpb::AppendEntriesRequest {
                vote: Some(vote(term + 1, mallory, true)),
                prev_log_id: Some(log_id(term, leader, last)),
                entries: vec![rpb::Entry {
                    log_id: Some(log_id(term + 1, mallory, last + 1)),
                    payload: Some(rpb::entry::Payload::Membership(membership.clone())),
                }],
                leader_commit: None,
                election: proof(term + 1),
            };
            let r =
                rt.block_on(async { raft_client(&c, victim, mallory).append_entries(req).await });
            let moved = match &r {
                Err(e) => e
                    .message()
                    .contains("conflicts with this node's committed entry"),
                Ok(r) => matches!(
                    r.get_ref().result,
                    Some(rpb::append_entries_response::Result::Conflict(_))
                        | Some(rpb::append_entries_response::Result::HigherVote(_))
                ),
            };
            if moved && attempt < 10 {
                std::thread::sleep(Duration::from_millis(300));
                continue;
            }
            let r = r
                .unwrap_or_else(|e| c.fail(&format!("{name}: {e:?}")))
                .into_inner();
            // Accepted only up to the entry before it.
            let matching = match r.result {
                Some(rpb::append_entries_response::Result::PartialSuccess(p)) => p.matching,
                other => c.fail(&format!("{name}: answered {other:?}")),
            };
            assert_eq!(matching, Some(log_id(term, leader, last)), "{name}");
            before = Some(st);
            break;
        }
        let before = before.unwrap();
        let s = c.status(victim).unwrap_or_else(|e| c.fail(&e));
        assert_eq!(
            s.members
                .iter()
                .map(|m| (m.id, m.voter))
                .collect::<Vec<_>>(),
            before
                .members
                .iter()
                .map(|m| (m.id, m.voter))
                .collect::<Vec<_>>(),
            "{name}: the victim's membership changed"
        );
    }
    let log = fs::read_to_string(c.stderr_log(victim)).unwrap();
    assert!(
        log.contains("refused a membership change no operator authorized"),
        "the refusal was not logged"
    );
    // The cluster goes on (the real leader stands again above the forged term).
    let ack = c.put_ok(victim, "m-after", "y");
    c.wait_converged(&ids, ack.log_index);
}

#[test]
fn append_entries_that_rewrite_committed_entries_or_carry_malformed_votes_are_refused() {
    let c = Cluster::start(3, Opts::default());
    let rt = runtime();
    let leader = c.leader();
    for k in 0..10 {
        c.put_ok(leader, &format!("a-{k}"), &format!("v{k}"));
    }
    let head = c.put_ok(leader, "a-head", "x").log_index;
    c.wait_converged(&c.ids(), head);
    let f = *c.ids().iter().find(|&&i| i != leader).unwrap();
    let term = c.status(leader).unwrap_or_else(|e| c.fail(&e)).term;
    let forged = term + 1000;
    let append = |req: rpb::AppendEntriesRequest| {
        let sender = req
            .vote
            .as_ref()
            .and_then(|v| v.leader_id.as_ref())
            .map_or(leader, |l| l.node_id);
        rt.block_on(async { raft_client(&c, f, sender).append_entries(req).await })
    };

    // The issue's packet: a newer "leader" rewrites index 1 (committed long ago).
    let r = append(rpb::AppendEntriesRequest {
        vote: Some(vote(forged, leader, true)),
        prev_log_id: None,
        entries: vec![blank(log_id(0, 0, 0)), blank(log_id(forged, leader, 1))],
        leader_commit: Some(log_id(forged, leader, 1)),
        election: vec![],
    });
    expect_refused(
        &c,
        "conflicting entry at index 1",
        r,
        "conflicts with this node's committed entry",
    );
    // The same through prev_log_id, with the leader's own vote.
    let r = append(rpb::AppendEntriesRequest {
        vote: Some(vote(term, leader, true)),
        prev_log_id: Some(log_id(0, 0, 1)),
        entries: vec![blank(log_id(term, leader, 2))],
        leader_commit: None,
        election: vec![],
    });
    expect_refused(
        &c,
        "conflicting prev_log_id",
        r,
        "conflicts with this node's committed",
    );
    keeps_serving(&c, f, leader, forged, "truncation");

    // Malformed votes and log ids.
    let heartbeat = |v: rpb::Vote| rpb::AppendEntriesRequest {
        vote: Some(v),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
        election: vec![],
    };
    let r = append(heartbeat(vote(term, f, true)));
    expect_refused(&c, "vote naming the receiver", r, "names this node");
    let r = append(heartbeat(vote(forged, leader, false)));
    expect_refused(&c, "uncommitted vote", r, "not committed");
    let r = append(heartbeat(vote(u64::MAX, leader, true)));
    expect_refused(&c, "term u64::MAX", r, "exceeds the limit");
    let r = append(heartbeat(vote(term + (1 << 33), leader, true)));
    expect_refused(&c, "term jump", r, "more than 2^24 above");
    let r = append(rpb::AppendEntriesRequest {
        vote: Some(vote(forged, leader, true)),
        prev_log_id: Some(log_id(term, leader, head)),
        entries: vec![blank(log_id(forged, leader, head + 2))],
        leader_commit: None,
        election: vec![],
    });
    expect_refused(&c, "gap after prev_log_id", r, "expected");
    let r = append(rpb::AppendEntriesRequest {
        vote: Some(vote(forged, leader, true)),
        prev_log_id: None,
        entries: vec![],
        leader_commit: Some(log_id(0, 0, 1_000_000)),
        election: vec![],
    });
    expect_refused(
        &c,
        "commit point from an old leader far ahead",
        r,
        "older leader",
    );
    let r = append(rpb::AppendEntriesRequest {
        vote: Some(vote(forged, leader, true)),
        prev_log_id: Some(log_id(u64::MAX >> 1, leader, 5)),
        entries: vec![],
        leader_commit: None,
        election: vec![],
    });
    expect_refused(
        &c,
        "log id newer than the vote",
        r,
        "newer than the sender's vote",
    );
    let vote_req = |v: rpb::Vote| {
        rt.block_on(async {
            let sender = v.leader_id.as_ref().map_or(leader, |l| l.node_id);
            raft_client(&c, f, sender)
                .vote(rpb::VoteRequest {
                    vote: Some(v),
                    last_log_id: Some(log_id(term, leader, head + 10)),
                })
                .await
        })
    };
    let r = vote_req(vote(u64::MAX, leader, false));
    expect_refused(&c, "vote request at u64::MAX", r, "exceeds the limit");
    let r = vote_req(vote(forged, leader, true));
    expect_refused(&c, "committed vote request", r, "is committed");
    let r = vote_req(vote(forged, f, false));
    expect_refused(&c, "vote request for the receiver", r, "names this node");
    keeps_serving(&c, f, leader, forged, "malformed");

    // Every node still agrees and applies the same log.
    let last = c.put_ok(leader, "a-last", "z").log_index;
    c.wait_converged(&c.ids(), last);
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// How many of `conns` the other side has closed (EOF or reset), without blocking.
fn closed_by_peer(conns: &mut [TcpStream]) -> usize {
    let mut n = 0;
    let mut buf = [0u8; 64];
    for s in conns.iter_mut() {
        s.set_nonblocking(true).unwrap();
        loop {
            match s.read(&mut buf) {
                Ok(0) => n += 1,
                Ok(_) => continue, // the server's HTTP/2 settings
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => n += 1,
            }
            break;
        }
    }
    n
}

#[test]
fn a_flood_of_idle_connections_does_not_stop_a_node() {
    const RAFT_CAP: usize = 64;
    const API_CAP: usize = 128;
    const FLOOD: usize = 1000; // per listener: 2000 in all
                               // Each wave must be seen capped within WAVE of its start: well inside the handshake timeout,
                               // so every close counted is the cap's doing, not the timeout's.
    const WAVE: Duration = Duration::from_secs(30);
    const HANDSHAKE: Duration = Duration::from_secs(45);
    let c = Cluster::start(
        3,
        Opts {
            extra_config: vec![
                format!("raft_max_connections = {RAFT_CAP}"),
                format!("api_max_connections = {API_CAP}"),
                format!(
                    "connection_handshake_timeout_ms = {}",
                    HANDSHAKE.as_millis()
                ),
            ],
            ..Opts::default()
        },
    );
    let leader = c.leader();
    let n = *c.ids().iter().find(|&&i| i != leader).unwrap();
    c.put_ok(n, "f-before", "0");
    let pid = c.pid(n).unwrap_or_else(|| c.fail("no pid"));
    let baseline = open_fds(pid);

    // Idle connections (never a byte sent) to both listeners; within WAVE of its start, each
    // wave finds the node holding at most its cap and the rest closed (long before the handshake
    // timeout could have closed any of them). Polled, not timed: under load the closes and the
    // descriptor count may lag.
    let started = Instant::now();
    let mut flood: Vec<TcpStream> = Vec::with_capacity(2 * FLOOD);
    let mut held = baseline;
    for (addr, cap) in [
        (c.api_addr(n).to_string(), API_CAP),
        (c.raft_addr(n).to_string(), RAFT_CAP),
    ] {
        let wave_start = Instant::now();
        // Half of them send one byte (a ClientHello that never finishes), half nothing: neither
        // finishes a TLS handshake, so all stay pending.
        let mut wave: Vec<TcpStream> = (0..FLOOD)
            .map(|k| {
                let mut s = TcpStream::connect(&addr)
                    .unwrap_or_else(|e| c.fail(&format!("flood connection {k} to {addr}: {e}")));
                if k % 2 == 1 {
                    use std::io::Write;
                    let _ = s.write_all(&[0x16]);
                }
                s
            })
            .collect();
        // (Connecting can take seconds: the kernel drops SYNs while the accept queue is full
        // and the client retries after 1 s, 3 s, ...)
        let (closed, fds) = loop {
            let closed = closed_by_peer(&mut wave);
            let fds = open_fds(pid);
            if closed >= FLOOD - cap && fds <= held + cap + 8 {
                break (closed, fds);
            }
            if wave_start.elapsed() >= WAVE {
                c.fail(&format!(
                    "{addr}: over its cap of {cap} {:?} after the wave began: {closed} of {FLOOD} \
                     closed, {fds} descriptors held (before this wave: {held})",
                    wave_start.elapsed()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(wave_start.elapsed() < HANDSHAKE);
        eprintln!(
            "{addr}: {closed} of {FLOOD} closed by the node; it holds {fds} descriptors \
             ({:?} after the wave began)",
            wave_start.elapsed()
        );
        held = fds;
        flood.extend(wave);
    }

    // New clients of the flooded listeners are served (each replaces one of the flood's pending
    // connections: one address holds only a few of those), writes commit through the node and
    // replicate to it over the peers' connections.
    // (The flood and the new clients share 127.0.0.1: a newcomer replaces one of that address's
    // pending connections once they are older than EVICT_PENDING_AFTER, 250 ms.)
    std::thread::sleep(Duration::from_millis(300));
    let rt = runtime();
    rt.block_on(async {
        let mut keys = gatekeeper_proto::v1::key_service_client::KeyServiceClient::new(
            c.key_target(n).channel().unwrap(),
        );
        keys.get_cluster_info(gatekeeper_proto::v1::GetClusterInfoRequest::default())
            .await
            .unwrap_or_else(|e| c.fail(&format!("a miner during the flood: {e}")));
        let r = raft_client(&c, n, leader)
            .read_index(rpb::ReadIndexRequest {})
            .await;
        if let Err(s) = &r {
            assert!(
                !matches!(s.code(), Code::Unavailable | Code::Unknown),
                "a member during the flood: {s:?}"
            );
        }
    });
    for k in 0..5 {
        c.status(n)
            .unwrap_or_else(|e| c.fail(&format!("status during the flood: {e}")));
        c.put_ok(n, &format!("f-during-{k}"), "d");
    }
    let last = c.put_ok(leader, "f-leader", "l").log_index;
    c.wait_converged(&c.ids(), last);
    let r = c.get(n, "f-during-4", Consistency::Linearizable);
    assert_eq!(r.map(|r| r.value), Ok(Some("d".to_string())));

    // Connections that stay silent are closed at the handshake timeout.
    c.wait_for(
        "every flood connection to be closed by the node",
        HANDSHAKE + WAIT,
        || {
            let closed = closed_by_peer(&mut flood);
            if closed == flood.len() {
                Ok(())
            } else {
                Err(format!("{closed} of {} closed", flood.len()))
            }
        },
    );
    eprintln!(
        "all flood connections closed {:?} after the flood began",
        started.elapsed()
    );
    drop(flood);
    c.wait_for(
        &format!("node {n}'s descriptors back near {baseline}"),
        WAIT,
        || {
            let now = open_fds(pid);
            if now <= baseline + 16 {
                Ok(())
            } else {
                Err(format!("{now} open"))
            }
        },
    );
    c.put_ok(n, "f-after", "a");
}

#[test]
fn a_nodes_data_dir_is_private_and_loose_modes_are_tightened_at_start() {
    let mut c = Cluster::start(
        1,
        Opts {
            snapshot_logs_since_last: Some(5),
            ..Opts::default()
        },
    );
    for k in 0..12 {
        c.put_ok(1, &format!("m-{k}"), "v");
    }
    let data = c.data_dir(1).to_path_buf();
    c.wait_for("a snapshot file", WAIT, || {
        let has = fs::read_dir(data.join("snapshots"))
            .map_err(|e| e.to_string())?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("snapshot-"));
        has.then_some(()).ok_or_else(|| "none yet".to_string())
    });
    let check_private = |when: &str| {
        let all = files_in(&data);
        for p in &all {
            let m = mode(p);
            let meta = fs::symlink_metadata(p).unwrap();
            let want = if meta.is_dir() { 0o700 } else { 0o600 };
            if meta.file_type().is_symlink() {
                continue;
            }
            assert!(
                m & 0o077 == 0 && (!meta.is_dir() || m == want),
                "{when}: {} has mode {m:o}, want {want:o}",
                p.display()
            );
        }
        for must in [
            "log",
            "sm",
            "sm.id",
            "snapshots",
            "enclave",
            "enclave/sealing.key",
        ] {
            assert!(all.contains(&data.join(must)), "{when}: {must} not found");
        }
        eprintln!("{when}: {} paths, all private", all.len());
    };
    check_private("after start");

    // Loosen some modes (as a copy with a permissive umask would), restart: tightened, logged.
    let st = c.stop(1);
    assert!(st.success());
    for (p, m) in [
        ("", 0o755),
        ("sm.id", 0o644),
        ("log", 0o775),
        ("snapshots", 0o777),
    ] {
        fs::set_permissions(data.join(p), fs::Permissions::from_mode(m)).unwrap();
    }
    c.restart(1);
    check_private("after restart");
    let log = fs::read_to_string(c.stderr_log(1)).unwrap_or_default()
        + &fs::read_to_string(c.stdout_log(1)).unwrap_or_default();
    for p in ["sm.id", "snapshots"] {
        let line = log
            .lines()
            .find(|l| l.contains("tightened the permissions") && l.contains(p))
            .unwrap_or_else(|| c.fail(&format!("no log line about tightening {p}")));
        eprintln!("{line}");
    }
    c.put_ok(1, "m-after", "v");
}

/// A follower whose data was lost comes back without `leave`/`join` and answers the leader that
/// its log conflicts below what it had confirmed. openraft's leader would panic on that answer
/// ("follower log reversion is not allowed") and stay down while still calling itself leader; a
/// member holding its certificate can send the same answer on purpose. The leader must refuse the
/// answer, keep committing with the rest, and not replicate to the wiped node.
#[test]
fn a_follower_that_lost_its_log_cannot_stop_the_leader() {
    let mut c = Cluster::start(3, Opts::default());
    let leader = c.leader();
    let f = *c.ids().iter().find(|&&i| i != leader).unwrap();
    for k in 0..20 {
        c.put_ok(leader, &format!("r-{k}"), "v");
    }
    let head = c.put_ok(leader, "r-head", "x").log_index;
    c.wait_converged(&c.ids(), head);
    c.kill9(f);
    c.wipe(f);
    c.restart(f);
    // The leader hears the wiped node's conflict answers; it keeps leading and committing.
    let log = c.dir().join(format!("n{leader}/stderr.log"));
    c.wait_for(
        "the leader to refuse the wiped follower's answer",
        WAIT,
        || {
            let text = fs::read_to_string(&log).map_err(|e| e.to_string())?;
            if text.contains("follower log reversion refused") {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    );
    for k in 0..5 {
        let ack = c.put_ok(leader, &format!("after-wipe-{k}"), "v");
        assert_eq!(ack.leader_id, leader, "{ack:?}");
    }
    let s = c.status(leader).unwrap_or_else(|e| c.fail(&e));
    assert_eq!(s.role, "leader", "{s:?}");
    let text = fs::read_to_string(&log).unwrap();
    assert!(!text.contains("panicked"), "the leader panicked:\n{text}");
    // The wiped node got nothing: it is not initialised.
    let w = c.status(f).unwrap_or_else(|e| c.fail(&e));
    assert!(
        w.last_applied.unwrap_or(0) == 0,
        "wiped node applied entries: {w:?}"
    );
}
