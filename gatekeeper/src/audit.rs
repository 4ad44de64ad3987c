//! The audit log: one JSON line per AdminService call, key delivery and key refusal, each line
//! carrying the SHA-256 of the line before it, so a modified, inserted or deleted line breaks the
//! chain ([`verify`], `gatekeeper audit verify FILE`). Worker keys and subjects appear only as
//! HMAC-SHA256 under an audit key (never in clear), and no secret ever does.
//!
//! What the chain proves: a line changed, inserted or deleted in the middle of a file breaks it
//! at the next line, and `verify` names it. It is a plain SHA-256 chain, so someone who can
//! rewrite the file can also recompute every hash after a change, and a file whose first line
//! is not sequence 1 (rotated, or its head cut off) is verified from that line on (`verify`
//! reports the first sequence): ship lines off the node as they are written and compare.
//!
//! Line fields, in this order: `seq` (1, 2, …), `time_ms`, `node`, `caller`, `method`, `epoch`,
//! `hmac_epoch`, `subject`, `worker`, `code` (`OK` or the stable error code), `prev` (hex SHA-256
//! of the previous line's bytes, without its newline; 64 zeros for the first line).
//!
//! `audit_required` (default in production): a line that cannot be written fails the request
//! (`UNAVAILABLE` + `AUDIT_FAILED`), as Vault's audit devices do. SIGHUP re-opens the file (log
//! rotation); the chain continues across files.
//!
//! The HMAC key is the cluster's audit key of an epoch (`keyring::derive::audit_key`, from that
//! epoch's master secret inside the enclave; `hmac_epoch` names it): every node holding the epoch
//! writes the same HMAC for the same worker key or subject, so lines of different nodes
//! correlate, and lines of different epochs do not. A delivery uses its own epoch, a refusal the
//! current one. A node that holds no master of that epoch (sealed) uses its own key instead
//! (random, sealed by the enclave at rest in `<data_dir>/audit.key`) and writes no `hmac_epoch`.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// One audited event, before it is chained.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event<'a> {
    /// Who called: `operator:<name>`, `worker`, `anonymous`, with the source address.
    pub caller: String,
    /// The gRPC method (`/gatekeeper.v1.KeyService/GetWorkerKey`).
    pub method: &'a str,
    /// The epoch a key was derived from.
    pub epoch: Option<u64>,
    /// The key's subject (cluster or contract id), HMAC'd before it is written.
    pub subject: Option<&'a [u8]>,
    /// The worker key, HMAC'd before it is written.
    pub worker: Option<&'a [u8]>,
    /// `OK` or the stable error code.
    pub code: &'a str,
    /// The epoch whose audit key HMACs `subject` and `worker` (the node's own key if it holds
    /// no master of it, or if `None`).
    pub hmac_epoch: Option<u64>,
}

/// One line as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// 1, 2, …
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The node that wrote it.
    pub node: u64,
    /// Who called.
    pub caller: String,
    /// Method.
    pub method: String,
    /// Epoch, for key deliveries.
    pub epoch: Option<u64>,
    /// The epoch whose cluster audit key made `subject` and `worker`; absent: the node's own key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_epoch: Option<u64>,
    /// HMAC of the subject, hex.
    pub subject: Option<String>,
    /// HMAC of the worker key, hex.
    pub worker: Option<String>,
    /// Result.
    pub code: String,
    /// SHA-256 of the previous line, hex.
    pub prev: String,
}

struct Chain {
    file: Box<dyn Write + Send>,
    seq: u64,
    prev: [u8; 32],
    /// The regular file behind `file` and its length after the last complete line: a line that
    /// fails part-way (a full disk) is cut off again, so the next one does not merge with it.
    disk: Option<(std::fs::File, u64)>,
}

/// Opens `path` for appending, with a second handle and its length for [`Chain::disk`].
fn open_append(path: &Path) -> std::io::Result<(std::fs::File, Option<(std::fs::File, u64)>)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let meta = file.metadata()?;
    let disk = if meta.is_file() {
        Some((file.try_clone()?, meta.len()))
    } else {
        None
    };
    Ok((file, disk))
}

/// An open audit log.
pub struct AuditLog {
    chain: Mutex<Chain>,
    /// The node's own key (no epoch held).
    key: Zeroizing<[u8; 32]>,
    /// Where epochs' audit keys come from, and those already derived (the newest few).
    epoch_keys: Option<Arc<dyn crate::enclave::Enclave>>,
    derived: Mutex<std::collections::BTreeMap<u64, Zeroizing<[u8; 32]>>>,
    node: u64,
    path: PathBuf,
}

/// How many epochs' audit keys a log keeps derived.
const DERIVED_KEYS: usize = 4;

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditLog({}, key redacted)", self.path.display())
    }
}

impl AuditLog {
    /// Opens `path` for appending, continuing the chain after its last line (a regular file's
    /// existing lines are read; a break in them is logged, not fatal: the operator verifies
    /// the file with `gatekeeper audit verify`).
    pub fn open(path: &Path, key: Zeroizing<[u8; 32]>, node: u64) -> std::io::Result<AuditLog> {
        let (mut seq, mut prev) = (0, [0u8; 32]);
        if std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
            // A last line without its newline was cut short (a crash or a full disk while it
            // was written): it was never a complete record and is cut off, so the next line
            // does not merge with it and the chain continues from the last complete line.
            let bytes = std::fs::read(path)?;
            if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                tracing::warn!(file = %path.display(), cut_bytes = bytes.len() - keep, "the audit log ends with an incomplete line; cutting it off");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .set_len(keep as u64)?;
            }
            let f = std::fs::File::open(path)?;
            for line in std::io::BufReader::new(f).split(b'\n') {
                let line = line?;
                if line.is_empty() {
                    continue;
                }
                if let Ok(l) = serde_json::from_slice::<Line>(&line) {
                    seq = l.seq;
                }
                prev = Sha256::digest(&line).into();
            }
            if let Err(e) = verify(path) {
                tracing::error!(file = %path.display(), error = %e, "the audit log's chain is broken; appending after its last line");
            }
        }
        let (file, disk) = open_append(path)?;
        let log = Self::with_writer(Box::new(file), seq, prev, key, node, path);
        log.chain.lock().unwrap_or_else(|p| p.into_inner()).disk = disk;
        Ok(log)
    }

    /// An audit log writing to `w`, continuing after `seq` / `prev` (tests).
    pub fn with_writer(
        w: Box<dyn Write + Send>,
        seq: u64,
        prev: [u8; 32],
        key: Zeroizing<[u8; 32]>,
        node: u64,
        path: &Path,
    ) -> AuditLog {
        AuditLog {
            chain: Mutex::new(Chain {
                file: w,
                seq,
                prev,
                disk: None,
            }),
            key,
            epoch_keys: None,
            derived: Mutex::default(),
            node,
            path: path.to_path_buf(),
        }
    }

    /// HMACs under the epochs' cluster audit keys, from `enclave` (see the module docs).
    pub fn with_epoch_keys(mut self, enclave: Arc<dyn crate::enclave::Enclave>) -> Self {
        self.epoch_keys = Some(enclave);
        self
    }

    /// The key for HMACs of a line about `epoch`: that epoch's audit key when the enclave holds
    /// its master, else the node's own key (`None`).
    fn hmac_key(&self, epoch: Option<u64>) -> (Option<u64>, Zeroizing<[u8; 32]>) {
        if let (Some(epoch), Some(enclave)) = (epoch, &self.epoch_keys) {
            let mut d = self.derived.lock().unwrap_or_else(|p| p.into_inner());
            // Only while the enclave holds the epoch: a retired epoch's key is dropped with it.
            if !enclave.has_master(epoch) {
                d.remove(&epoch);
                return (None, self.key.clone());
            }
            if let Some(k) = d.get(&epoch) {
                return (Some(epoch), k.clone());
            }
            if let Ok(k) = enclave.audit_key(epoch) {
                d.insert(epoch, k.clone());
                while d.len() > DERIVED_KEYS {
                    d.pop_first();
                }
                return (Some(epoch), k);
            }
        }
        (None, self.key.clone())
    }

    /// HMAC-SHA256 of `data` under the node's own audit key, hex.
    pub fn hmac(&self, data: &[u8]) -> String {
        hmac_hex(&self.key, data)
    }

    /// Appends `e` as the next line. On an error nothing is chained: the next line links to
    /// the last one written.
    pub fn record(&self, e: &Event<'_>, time_ms: u64) -> std::io::Result<()> {
        let hashed = e.subject.is_some() || e.worker.is_some();
        let (hmac_epoch, key) = self.hmac_key(e.hmac_epoch.filter(|_| hashed));
        let mut c = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        let line = Line {
            seq: c.seq + 1,
            time_ms,
            node: self.node,
            caller: e.caller.clone(),
            method: e.method.to_string(),
            epoch: e.epoch,
            hmac_epoch,
            subject: e.subject.map(|s| hmac_hex(&key, s)),
            worker: e.worker.map(|w| hmac_hex(&key, w)),
            code: e.code.to_string(),
            prev: hex::encode(c.prev),
        };
        let mut bytes = serde_json::to_vec(&line).expect("audit lines serialize");
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        bytes.push(b'\n');
        if let Err(e) = c.file.write_all(&bytes).and_then(|()| c.file.flush()) {
            if let Some((f, len)) = &c.disk {
                if let Err(cut) = f.set_len(*len) {
                    tracing::error!(file = %self.path.display(), error = %cut, "cannot cut off a partly written audit line");
                }
            }
            return Err(e);
        }
        if let Some((_, len)) = &mut c.disk {
            *len += bytes.len() as u64;
        }
        c.seq += 1;
        c.prev = hash;
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-opens the file at its path (after log rotation: SIGHUP), continuing the chain: the
    /// new file's first line links to the last line of the old one.
    pub fn reopen(&self) -> std::io::Result<()> {
        let (file, disk) = open_append(&self.path)?;
        let mut c = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        c.file = Box::new(file);
        c.disk = disk;
        Ok(())
    }
}

/// HMAC-SHA256 of `data` under `key`, hex.
fn hmac_hex(key: &[u8; 32], data: &[u8]) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&key[..]).expect("HMAC takes any key length");
    m.update(data);
    hex::encode(m.finalize().into_bytes())
}

/// Why a chain does not verify: the first bad line (1-based) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct Break {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

/// Checks the chain of the lines in `bytes`: each line parses, its `seq` is the previous + 1 and
/// its `prev` is the SHA-256 of the previous line. Returns the number of lines.
pub fn verify_bytes(bytes: &[u8]) -> Result<u64, Break> {
    let mut prev = [0u8; 32];
    let mut expected_seq: Option<u64> = None;
    let mut n = 0u64;
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    for (i, line) in lines.iter().copied().enumerate() {
        let no = i as u64 + 1;
        if line.is_empty() {
            // Only the end of the last line may be empty.
            if i + 1 < lines.len() {
                return Err(Break {
                    line: no,
                    reason: "empty line".into(),
                });
            }
            continue;
        }
        let l: Line = serde_json::from_slice(line).map_err(|e| Break {
            line: no,
            reason: format!("not an audit line: {e}"),
        })?;
        let first = expected_seq.is_none();
        if let Some(s) = expected_seq {
            if l.seq != s {
                return Err(Break {
                    line: no,
                    reason: format!(
                        "sequence {} where {s} was expected (a line is missing)",
                        l.seq
                    ),
                });
            }
        }
        // The first line may continue an older, rotated-away file: its `prev` is not checked,
        // but a file that starts at sequence 1 must start the chain.
        if (!first || l.seq == 1) && l.prev != hex::encode(prev) {
            return Err(Break {
                line: no,
                reason: "its prev is not the hash of the line before: a line before it was \
                         changed, inserted or deleted"
                    .into(),
            });
        }
        prev = Sha256::digest(line).into();
        expected_seq = Some(l.seq + 1);
        n += 1;
    }
    Ok(n)
}

/// [`verify_bytes`] of a file.
pub fn verify(path: &Path) -> Result<u64, Break> {
    let bytes = std::fs::read(path).map_err(|e| Break {
        line: 0,
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    verify_bytes(&bytes)
}

/// The node's audit key: unsealed from `path`, or made and sealed there on first use.
pub fn load_or_create_key(
    enclave: &dyn crate::enclave::Enclave,
    path: &Path,
) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    use anyhow::Context;
    const LABEL: &str = "audit-key";
    if path.exists() {
        let blob = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let key = enclave
            .unseal(LABEL, &blob)
            .map_err(|e| anyhow::anyhow!("unseal {}: {e}", path.display()))?;
        let key: [u8; 32] = key
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} does not hold a 32-byte key", path.display()))?;
        return Ok(Zeroizing::new(key));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key[..]);
    let blob = enclave.seal(LABEL, &key[..]);
    let mut f = gatekeeper_raft::private_fs::create_new_file(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(&blob)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("write {}", path.display()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer the test can read back, or make fail.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>, Arc<std::sync::atomic::AtomicBool>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.1.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other("disk full"));
            }
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log(buf: &Buf) -> AuditLog {
        AuditLog::with_writer(
            Box::new(buf.clone()),
            0,
            [0; 32],
            Zeroizing::new([7; 32]),
            1,
            Path::new("mem"),
        )
    }

    fn event<'a>(method: &'a str, code: &'a str, worker: Option<&'a [u8]>) -> Event<'a> {
        Event {
            caller: "worker 127.0.0.1".into(),
            method,
            epoch: Some(0),
            subject: None,
            worker,
            code,
            hmac_epoch: None,
        }
    }

    #[test]
    fn lines_of_nodes_holding_an_epoch_correlate_and_a_sealed_epoch_falls_back_to_the_node_key() {
        use crate::enclave::software::SoftwareEnclave;
        use crate::enclave::{Enclave, Recipient};
        let d = tempfile::tempdir().unwrap();
        let e = Arc::new(SoftwareEnclave::open(d.path(), 1, None).unwrap());
        let to = [Recipient {
            node_id: 1,
            hpke: e.hpke_public_key(),
        }];
        let p = e
            .create_epoch(keyring::GatekeeperId([1; 32]), 0, 1, &to, false)
            .unwrap();
        assert!(e.confirm_epoch(0, &p.master_public_key));
        // Two nodes (their own keys differ) holding the same epoch's master.
        let (b1, b2) = (Buf::default(), Buf::default());
        let one = log(&b1).with_epoch_keys(e.clone());
        let two = AuditLog::with_writer(
            Box::new(b2.clone()),
            0,
            [0; 32],
            Zeroizing::new([8; 32]),
            2,
            Path::new("mem"),
        )
        .with_epoch_keys(e.clone());
        let worker = [0xcdu8; 32];
        for (epoch, t) in [(Some(0), 1), (Some(5), 2), (None, 3)] {
            let ev = Event {
                hmac_epoch: epoch,
                ..event("/k", "OK", Some(&worker))
            };
            one.record(&ev, t).unwrap();
            two.record(&ev, t).unwrap();
        }
        let lines = |b: &Buf| -> Vec<Line> {
            let bytes = b.0.lock().unwrap().clone();
            bytes
                .split(|c| *c == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect()
        };
        let (l1, l2) = (lines(&b1), lines(&b2));
        // Epoch 0 is held: the cluster's audit key, named, the same HMAC on both nodes.
        assert_eq!(l1[0].hmac_epoch, Some(0));
        assert_eq!(l1[0].worker, l2[0].worker);
        assert_eq!(
            l1[0].worker.as_deref(),
            Some(hmac_hex(&e.audit_key(0).unwrap(), &worker).as_str())
        );
        // Epoch 5 is not held, and no epoch: each node's own key, unnamed.
        for i in [1, 2] {
            assert_eq!((l1[i].hmac_epoch, l2[i].hmac_epoch), (None, None));
            assert_ne!(l1[i].worker, l2[i].worker);
            assert_eq!(l1[i].worker, Some(one.hmac(&worker)));
        }
        assert_ne!(l1[0].worker, l1[1].worker);
    }

    #[test]
    fn the_chain_verifies_and_any_change_breaks_it_at_the_right_line() {
        let buf = Buf::default();
        let a = log(&buf);
        let worker = [0xabu8; 32];
        for i in 0..5 {
            let m = format!("/m{i}");
            a.record(&event(&m, "OK", Some(&worker)), 1_000 + i)
                .unwrap();
        }
        let bytes = buf.0.lock().unwrap().clone();
        assert_eq!(verify_bytes(&bytes), Ok(5));
        // The worker key never appears in clear.
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains(&hex::encode(worker)), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        // A changed line: the next line's prev no longer matches.
        let mut changed = lines.clone();
        let edited = lines[2].replace("\"/m2\"", "\"/mX\"");
        changed[2] = &edited;
        let e = verify_bytes(changed.join("\n").as_bytes()).unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        // A deleted line.
        let mut deleted = lines.clone();
        deleted.remove(1);
        let e = verify_bytes(deleted.join("\n").as_bytes()).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        // Garbage.
        let e = verify_bytes(b"{\"seq\":1}\n").unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn a_failed_write_is_reported_and_the_chain_continues_from_the_last_line_written() {
        let buf = Buf::default();
        let a = log(&buf);
        a.record(&event("/a", "OK", None), 1).unwrap();
        buf.1.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(a.record(&event("/b", "OK", None), 2).is_err());
        buf.1.store(false, std::sync::atomic::Ordering::SeqCst);
        a.record(&event("/c", "OK", None), 3).unwrap();
        assert_eq!(verify_bytes(&buf.0.lock().unwrap()), Ok(2));
    }

    #[test]
    fn a_line_that_fails_part_way_is_cut_off_at_once() {
        /// Writes 10 bytes of whatever it is given to the file, then fails (a disk that fills).
        struct Filling(std::fs::File);
        impl Write for Filling {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if buf.len() > 10 {
                    self.0.write_all(&buf[..10])?;
                    return Ok(10);
                }
                Err(std::io::Error::other("no space left on device"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let a = AuditLog::open(&p, Zeroizing::new([1; 32]), 1).unwrap();
        a.record(&event("/x", "OK", None), 1).unwrap();
        let good = std::fs::read(&p).unwrap();
        let real = std::mem::replace(
            &mut a.chain.lock().unwrap().file,
            Box::new(Filling(
                std::fs::OpenOptions::new().append(true).open(&p).unwrap(),
            )),
        );
        assert!(a.record(&event("/y", "OK", None), 2).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), good, "the fragment is gone");
        a.chain.lock().unwrap().file = real;
        a.record(&event("/z", "OK", None), 3).unwrap();
        assert_eq!(verify(&p), Ok(2));
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_removed_when_the_file_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let a = AuditLog::open(&p, Zeroizing::new([1; 32]), 1).unwrap();
        a.record(&event("/x", "OK", None), 1).unwrap();
        a.record(&event("/y", "OK", None), 2).unwrap();
        drop(a);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"seq\":3,\"time_ms\":").unwrap();
        drop(f);
        let a = AuditLog::open(&p, Zeroizing::new([1; 32]), 1).unwrap();
        a.record(&event("/z", "OK", None), 3).unwrap();
        assert_eq!(verify(&p), Ok(3));
    }

    #[test]
    fn a_reopened_file_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        for round in 0..2 {
            let a = AuditLog::open(&p, Zeroizing::new([1; 32]), 1).unwrap();
            a.record(&event("/x", "OK", None), round).unwrap();
            a.record(&event("/y", "NOT_A_MEMBER", None), round).unwrap();
        }
        assert_eq!(verify(&p), Ok(4));
    }
}

/// The audit log as the services use it: whether a line that cannot be written fails the
/// request (`audit_required`).
#[derive(Debug)]
pub struct Auditor {
    /// The log.
    pub log: AuditLog,
    /// Fail requests whose line cannot be written.
    pub required: bool,
}

/// Audit lines that could not be written are logged at most once a second.
static WRITE_FAILURES: gatekeeper_raft::lograte::LogGate =
    gatekeeper_raft::lograte::LogGate::new(std::time::Duration::from_secs(1));

impl Auditor {
    /// Records `e`; `Err` when the line could not be written and the log is required (the
    /// caller then fails the request with `AUDIT_FAILED`).
    pub fn record(&self, e: &Event<'_>) -> Result<(), crate::error::ApiError> {
        match self.log.record(e, crate::clock::now_ms()) {
            Ok(()) => Ok(()),
            Err(err) => {
                if let Some(n) = WRITE_FAILURES.pass(std::time::Instant::now()) {
                    tracing::error!(file = %self.log.path().display(), error = %err, failed_since_last_line = n, required = self.required, "cannot write the audit log");
                }
                if self.required {
                    Err(crate::error::ApiError::new(
                        crate::error::ErrorCode::AuditFailed,
                        "the audit log cannot be written; the request was not served",
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// A tower layer recording every call of the service it wraps (the admin listener): method,
/// caller (the client certificate's name and the source address) and result code. When the
/// line cannot be written and the log is required, the response is replaced by `UNAVAILABLE` +
/// `AUDIT_FAILED`. Each call runs in its own task, to its end: a caller that disconnects
/// while its command is being committed cannot leave a committed command without its line.
#[derive(Clone, Debug)]
pub struct AuditLayer(pub std::sync::Arc<Auditor>);

impl<S> tower::Layer<S> for AuditLayer {
    type Service = AuditService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuditService(inner, self.0.clone())
    }
}

/// See [`AuditLayer`].
#[derive(Clone, Debug)]
pub struct AuditService<S>(S, std::sync::Arc<Auditor>);

/// Who called, as an audit line names it.
pub fn caller_of(extensions: &http::Extensions) -> String {
    let info = extensions.get::<crate::tls::ConnectInfo>();
    let addr = info
        .map(|i| i.remote_addr.to_string())
        .unwrap_or_else(|| "unknown".into());
    match info
        .and_then(|i| i.peer.as_ref())
        .and_then(|p| p.common_name.clone())
    {
        Some(cn) => format!("{cn} {addr}"),
        None => format!("anonymous {addr}"),
    }
}

impl<S, ReqBody> tower::Service<http::Request<ReqBody>> for AuditService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = req.uri().path().to_string();
        let method_for_panic = method.clone();
        let caller = caller_of(req.extensions());
        let auditor = self.1.clone();
        let fut = self.0.call(req);
        let call = tokio::spawn(async move {
            let resp = fut.await?;
            let h = resp.headers();
            let code = match h.get(crate::error::ERROR_CODE_METADATA) {
                Some(c) => c.to_str().unwrap_or("UNKNOWN").to_string(),
                None if h.get("grpc-status").is_some_and(|s| s != "0") => "UNKNOWN".into(),
                None => "OK".into(),
            };
            let e = Event {
                caller,
                method: &method,
                code: &code,
                ..Default::default()
            };
            match auditor.record(&e) {
                Ok(()) => Ok(resp),
                Err(err) => Ok(tonic::Status::from(err).into_http()),
            }
        });
        Box::pin(async move {
            match call.await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, method = %method_for_panic, "admin call failed");
                    Ok(
                        tonic::Status::internal("the admin call failed inside the node")
                            .into_http(),
                    )
                }
            }
        })
    }
}
