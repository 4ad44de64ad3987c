//! The snapshot data format: what a leader streams to a follower in `InstallSnapshot`, and what
//! the state machine store keeps inside its snapshot files.
//!
//! ```text
//! GKSNAP/1 <sha256 of body, 64 lowercase hex> <body length, decimal>\n
//! <body: the JSON of sm_store::Applied>
//! ```
//!
//! One decoder, [`decode`], reads it everywhere: the RaftService server validating a received
//! snapshot before openraft sees it, the state machine installing it, and the store loading its
//! latest snapshot at start. [`StreamCheck`] checks the same header, length and checksum
//! incrementally while the bytes arrive, so a stream that is not a snapshot is refused at its
//! first chunk and a damaged one before it is ever read into memory.

use crate::sm_store::Applied;
use crate::{Node, NodeId};
use openraft::SnapshotMeta;
use sha2::{Digest, Sha256};

/// The header's magic, up to and including the `/` before the version.
pub const MAGIC: &[u8] = b"GKSNAP/";
/// The format version this node writes and reads.
pub const VERSION: u32 = 1;
/// Longest header line accepted (`GKSNAP/1 ` + 64 hex + ` ` + 20 digits + `\n` is 95 bytes).
pub const MAX_HEADER_BYTES: usize = 128;

/// Why bytes are not a valid snapshot. Each message names the check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotDataError {
    /// The data does not start with the `GKSNAP/` magic.
    #[error("snapshot data is not a Gatekeeper snapshot (it does not start with \"GKSNAP/\")")]
    BadMagic,
    /// Another format version.
    #[error("snapshot format version {0} is not supported (this node reads version {VERSION})")]
    UnsupportedVersion(String),
    /// The header line is malformed.
    #[error("snapshot header is malformed: {0}")]
    BadHeader(String),
    /// The body is shorter or longer than the header (or the stream's total size) says.
    #[error("snapshot body has {actual} bytes but its header says {declared}")]
    Length {
        /// Bytes the header declares.
        declared: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The stream's `total_size` disagrees with the header.
    #[error(
        "snapshot header declares {declared} bytes in all but the stream's total_size is {total}"
    )]
    TotalSize {
        /// Header length plus declared body length.
        declared: u64,
        /// `SnapshotHeader.total_size`.
        total: u64,
    },
    /// The body's SHA-256 differs from the header's.
    #[error("snapshot body fails its SHA-256 checksum")]
    Checksum,
    /// The body is not the JSON of the state.
    #[error("snapshot body does not decode into the state: {0}")]
    Decode(String),
    /// The decoded state disagrees with the snapshot's metadata.
    #[error("snapshot state disagrees with its metadata: {0}")]
    Inconsistent(String),
}

/// A parsed header line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// SHA-256 of the body.
    pub sha256: [u8; 32],
    /// Body length in bytes.
    pub body_len: u64,
    /// Length of the header line, newline included.
    pub header_len: usize,
}

/// Encodes `applied` in the snapshot format. The result is ASCII header + JSON, so valid UTF-8.
pub fn encode(applied: &Applied) -> String {
    let body = serde_json::to_string(applied).expect("the state serializes");
    let sum = hex::encode(Sha256::digest(body.as_bytes()));
    let mut out = format!("GKSNAP/{VERSION} {sum} {}\n", body.len());
    out.push_str(&body);
    out
}

/// Parses the header line at the start of `bytes` (which must contain its newline).
fn parse_header(bytes: &[u8]) -> Result<Header, SnapshotDataError> {
    check_magic(bytes)?;
    let nl = bytes
        .iter()
        .take(MAX_HEADER_BYTES)
        .position(|&b| b == b'\n')
        .ok_or_else(|| {
            SnapshotDataError::BadHeader(format!(
                "no end of header line within {MAX_HEADER_BYTES} bytes"
            ))
        })?;
    let line = std::str::from_utf8(&bytes[MAGIC.len()..nl])
        .map_err(|_| SnapshotDataError::BadHeader("header is not ASCII".into()))?;
    let mut parts = line.split(' ');
    let version = parts.next().unwrap_or_default();
    if version != VERSION.to_string() {
        return Err(SnapshotDataError::UnsupportedVersion(
            version.chars().take(16).collect(),
        ));
    }
    let (Some(sum), Some(len), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SnapshotDataError::BadHeader(
            "expected \"GKSNAP/1 <sha256 hex> <length>\"".into(),
        ));
    };
    let sum: [u8; 32] = hex::decode(sum)
        .ok()
        .filter(|_| sum.bytes().all(|b| !b.is_ascii_uppercase()))
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            SnapshotDataError::BadHeader("checksum is not 64 lowercase hex digits".into())
        })?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SnapshotDataError::BadHeader(
            "body length is not a decimal number".into(),
        ));
    }
    let body_len: u64 = len
        .parse()
        .map_err(|_| SnapshotDataError::BadHeader("body length does not fit 64 bits".into()))?;
    Ok(Header {
        sha256: sum,
        body_len,
        header_len: nl + 1,
    })
}

/// Refuses as soon as the first bytes differ from the magic.
fn check_magic(prefix: &[u8]) -> Result<(), SnapshotDataError> {
    let n = prefix.len().min(MAGIC.len());
    if prefix[..n] != MAGIC[..n] {
        return Err(SnapshotDataError::BadMagic);
    }
    Ok(())
}

/// Decodes snapshot data into the state: header (magic, version), exact length, SHA-256, then
/// the full JSON decode. The only decoder of snapshot data.
pub fn decode(bytes: &[u8]) -> Result<Applied, SnapshotDataError> {
    let h = parse_header(bytes)?;
    let body = &bytes[h.header_len..];
    if body.len() as u64 != h.body_len {
        return Err(SnapshotDataError::Length {
            declared: h.body_len,
            actual: body.len() as u64,
        });
    }
    if Sha256::digest(body).as_slice() != h.sha256 {
        return Err(SnapshotDataError::Checksum);
    }
    serde_json::from_slice(body).map_err(|e| SnapshotDataError::Decode(e.to_string()))
}

/// [`decode`]s snapshot data and checks that the state it holds is the one `meta` describes: the
/// same last applied log id and the same membership (a leader builds both from one state).
pub fn validate(
    meta: &SnapshotMeta<NodeId, Node>,
    bytes: &[u8],
) -> Result<Applied, SnapshotDataError> {
    let a = decode(bytes)?;
    if a.last_applied != meta.last_log_id {
        return Err(SnapshotDataError::Inconsistent(format!(
            "the state was last applied at {} but the metadata says {}",
            show(a.last_applied),
            show(meta.last_log_id)
        )));
    }
    if a.last_membership != meta.last_membership {
        return Err(SnapshotDataError::Inconsistent(format!(
            "the state's membership {} is not the metadata's {}",
            a.last_membership, meta.last_membership
        )));
    }
    Ok(a)
}

fn show(l: Option<openraft::LogId<NodeId>>) -> String {
    l.map_or_else(|| "nothing".into(), |l| l.to_string())
}

/// Checks the framing of snapshot data while it streams in: the magic from the first byte, the
/// header once its line is complete (and that header plus body add up to `total_size`), the body
/// length as bytes arrive, and the checksum at the end. Nothing is kept but the header line and
/// a running hash.
#[derive(Debug)]
pub struct StreamCheck {
    total_size: u64,
    head: Vec<u8>,
    header: Option<Header>,
    hasher: Sha256,
    body_seen: u64,
}

impl StreamCheck {
    /// A check for a stream that announced `total_size` bytes.
    pub fn new(total_size: u64) -> Self {
        Self {
            total_size,
            head: Vec::new(),
            header: None,
            hasher: Sha256::new(),
            body_seen: 0,
        }
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, mut chunk: &[u8]) -> Result<(), SnapshotDataError> {
        if self.header.is_none() {
            let room = MAX_HEADER_BYTES - self.head.len();
            let take = match chunk.iter().take(room).position(|&b| b == b'\n') {
                Some(nl) => nl + 1,
                None => chunk.len().min(room),
            };
            self.head.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            check_magic(&self.head)?;
            if self.head.last() == Some(&b'\n') {
                let h = parse_header(&self.head)?;
                let declared = (h.header_len as u64).saturating_add(h.body_len);
                if declared != self.total_size {
                    return Err(SnapshotDataError::TotalSize {
                        declared,
                        total: self.total_size,
                    });
                }
                self.header = Some(h);
            } else if self.head.len() >= MAX_HEADER_BYTES {
                return Err(parse_header(&self.head).expect_err("no newline: malformed"));
            } else {
                return Ok(());
            }
        }
        let h = self.header.as_ref().expect("header parsed above");
        self.body_seen += chunk.len() as u64;
        if self.body_seen > h.body_len {
            return Err(SnapshotDataError::Length {
                declared: h.body_len,
                actual: self.body_seen,
            });
        }
        self.hasher.update(chunk);
        Ok(())
    }

    /// Checks that the body was complete and matches its checksum.
    pub fn finish(self) -> Result<(), SnapshotDataError> {
        let Some(h) = self.header else {
            return Err(SnapshotDataError::BadHeader(
                "the data ended inside the header line".into(),
            ));
        };
        if self.body_seen != h.body_len {
            return Err(SnapshotDataError::Length {
                declared: h.body_len,
                actual: self.body_seen,
            });
        }
        if self.hasher.finalize().as_slice() != h.sha256 {
            return Err(SnapshotDataError::Checksum);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::GatekeeperState;
    use openraft::{CommittedLeaderId, LogId};

    fn applied() -> Applied {
        let mut state = GatekeeperState::default();
        state.kv.insert("k".into(), "v".into());
        state.audit_sequence = 3;
        Applied {
            last_applied: Some(LogId::new(CommittedLeaderId::new(2, 1), 9)),
            state,
            ..Default::default()
        }
    }

    fn stream(data: &[u8], total: u64, chunk: usize) -> Result<(), SnapshotDataError> {
        let mut c = StreamCheck::new(total);
        for part in data.chunks(chunk.max(1)) {
            c.update(part)?;
        }
        c.finish()
    }

    /// The figures behind `DEFAULT_MAX_SNAPSHOT_BYTES` (network.rs) and the docs: bytes of
    /// snapshot per worker (with one cluster), per session and per contract binding, and a state
    /// at Phala's scale.
    #[test]
    fn snapshot_size_per_record_backs_the_default_cap() {
        use crate::state::{Bytes32, WorkerRecord, WorkerStatus};
        let n = 1000u32;
        let key = |tag: u8, i: u32| {
            let mut b = [tag; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            Bytes32(b)
        };
        let size = |st: &GatekeeperState| {
            encode(&Applied {
                state: st.clone(),
                ..Default::default()
            })
            .len() as f64
        };
        let empty = size(&GatekeeperState::default());
        let mut st = GatekeeperState::default();
        for i in 0..n {
            st.workers.insert(
                key(1, i),
                WorkerRecord {
                    public_key: key(1, i),
                    attestation_provider: "dcap".into(),
                    confidence_level: 1,
                    registered_at: 20_000_000 + u64::from(i),
                    status: WorkerStatus::Active,
                    clusters: [key(2, i % 16)].into_iter().collect(),
                },
            );
        }
        let per_worker = (size(&st) - empty) / f64::from(n);
        let with_workers = size(&st);
        for i in 0..n {
            st.sessions.insert(key(3, i), key(1, i));
        }
        let per_session = (size(&st) - with_workers) / f64::from(n);
        let with_sessions = size(&st);
        for i in 0..n {
            st.contracts.insert(key(4, i), key(2, i % 16));
        }
        let per_contract = (size(&st) - with_sessions) / f64::from(n);
        eprintln!("bytes per worker {per_worker}, session {per_session}, contract {per_contract}");
        assert!((250.0..=400.0).contains(&per_worker), "{per_worker}");
        assert!((100.0..=160.0).contains(&per_session), "{per_session}");
        assert!((100.0..=160.0).contains(&per_contract), "{per_contract}");
        // ~40,000 workers and sessions, 5,000 contracts, 12 members with ~10 KiB of evidence.
        let phala =
            40_000.0 * (per_worker + per_session) + 5_000.0 * per_contract + 12.0 * 10_240.0;
        assert!(phala < 32.0 * 1024.0 * 1024.0, "{phala}");
        assert!(phala * 10.0 < crate::network::DEFAULT_MAX_SNAPSHOT_BYTES as f64);
    }

    #[test]
    fn encoded_state_decodes_and_streams() {
        let a = applied();
        let data = encode(&a);
        assert!(data.starts_with("GKSNAP/1 "));
        let back = decode(data.as_bytes()).unwrap();
        assert_eq!(back.state, a.state);
        assert_eq!(back.last_applied, a.last_applied);
        for chunk in [1, 7, 95, 96, 1000, data.len()] {
            stream(data.as_bytes(), data.len() as u64, chunk).unwrap();
        }
    }

    #[test]
    fn every_damage_is_refused_with_its_reason() {
        let data = encode(&applied()).into_bytes();
        let total = data.len() as u64;
        let hl = data.iter().position(|&b| b == b'\n').unwrap() + 1;

        // Random bytes: refused at the first byte.
        let random: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
        assert_eq!(decode(&random).unwrap_err(), SnapshotDataError::BadMagic);
        let mut c = StreamCheck::new(5000);
        assert_eq!(
            c.update(&random[..1]).unwrap_err(),
            SnapshotDataError::BadMagic
        );
        // Bare JSON (the pre-envelope wire format) is not a snapshot either.
        let json = serde_json::to_vec(&applied()).unwrap();
        assert_eq!(decode(&json).unwrap_err(), SnapshotDataError::BadMagic);

        // Another version.
        let mut v2 = data.clone();
        v2[7] = b'2';
        assert!(matches!(
            decode(&v2).unwrap_err(),
            SnapshotDataError::UnsupportedVersion(v) if v == "2"
        ));
        // A header line that never ends.
        let long = [MAGIC, b"1 ".as_slice(), &[b'a'; 200]].concat();
        assert!(matches!(
            decode(&long).unwrap_err(),
            SnapshotDataError::BadHeader(_)
        ));
        assert!(matches!(
            stream(&long, long.len() as u64, 10).unwrap_err(),
            SnapshotDataError::BadHeader(_)
        ));
        // Uppercase or short checksums, non-numeric lengths.
        let upper = format!("GKSNAP/1 {} 2\n{{}}", "AB".repeat(32));
        assert!(matches!(
            decode(upper.as_bytes()).unwrap_err(),
            SnapshotDataError::BadHeader(_)
        ));
        let short = format!("GKSNAP/1 {} 2\n{{}}", "ab".repeat(31));
        assert!(matches!(
            decode(short.as_bytes()).unwrap_err(),
            SnapshotDataError::BadHeader(_)
        ));
        let bad_len = format!("GKSNAP/1 {} 12x\n{{}}", "0".repeat(64));
        assert!(matches!(
            decode(bad_len.as_bytes()).unwrap_err(),
            SnapshotDataError::BadHeader(_)
        ));

        // Valid header, truncated body: by length at decode, at finish when streaming.
        let cut = &data[..data.len() - 10];
        assert!(matches!(
            decode(cut).unwrap_err(),
            SnapshotDataError::Length { .. }
        ));
        assert!(matches!(
            stream(cut, total, 64).unwrap_err(),
            SnapshotDataError::Length { .. }
        ));
        // ...and a stream whose total_size disagrees with the header is refused at the header.
        let mut c = StreamCheck::new(total - 10);
        assert!(matches!(
            c.update(&data[..hl]).unwrap_err(),
            SnapshotDataError::TotalSize { .. }
        ));
        // Extra bytes after the body.
        let mut longer = data.clone();
        longer.extend_from_slice(b"  ");
        assert!(matches!(
            decode(&longer).unwrap_err(),
            SnapshotDataError::Length { .. }
        ));
        let mut c = StreamCheck::new(total);
        c.update(&data).unwrap();
        assert!(matches!(
            c.update(b" ").unwrap_err(),
            SnapshotDataError::Length { .. }
        ));
        // A flipped body byte.
        let mut flipped = data.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        assert_eq!(decode(&flipped).unwrap_err(), SnapshotDataError::Checksum);
        assert_eq!(
            stream(&flipped, total, 100).unwrap_err(),
            SnapshotDataError::Checksum
        );
        // Valid framing (header, length, checksum) around content that is not the state.
        for body in [
            &b"{\"x\":1}"[..],
            b"[1,2,3]",
            b"{\"last_applied\":",
            b"\xff\xfe",
        ] {
            let sum = hex::encode(Sha256::digest(body));
            let mut framed = format!("GKSNAP/1 {sum} {}\n", body.len()).into_bytes();
            framed.extend_from_slice(body);
            stream(&framed, framed.len() as u64, 3).unwrap();
            assert!(matches!(
                decode(&framed).unwrap_err(),
                SnapshotDataError::Decode(_)
            ));
        }
        // A valid snapshot whose metadata describes another state.
        let a = applied();
        let data = encode(&a);
        let meta = |last| SnapshotMeta {
            last_log_id: last,
            last_membership: a.last_membership.clone(),
            snapshot_id: "s".into(),
        };
        validate(&meta(a.last_applied), data.as_bytes()).unwrap();
        let other = Some(LogId::new(CommittedLeaderId::new(2, 1), 10));
        assert!(matches!(
            validate(&meta(other), data.as_bytes()).unwrap_err(),
            SnapshotDataError::Inconsistent(m) if m.contains("last applied")
        ));
        let mut m = meta(a.last_applied);
        m.last_membership = openraft::StoredMembership::new(other, Default::default());
        assert!(matches!(
            validate(&m, data.as_bytes()).unwrap_err(),
            SnapshotDataError::Inconsistent(m) if m.contains("membership")
        ));
        // Empty data.
        assert!(matches!(
            StreamCheck::new(0).finish().unwrap_err(),
            SnapshotDataError::BadHeader(_)
        ));
        assert!(decode(b"").is_err());
    }
}
