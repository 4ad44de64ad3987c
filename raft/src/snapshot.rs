//! The snapshot data format: what a leader streams to a follower in `InstallSnapshot`, and what
//! the state machine store keeps inside its snapshot files.
//!
//! ```text
//! GKSNAP/2 <sha256 of body, 64 lowercase hex> <body length> <certificate length>\n
//! <body: the JSON of sm_store::Applied><certificate: JSON of CheckpointCertificate, or nothing>
//! ```
//!
//! The body's SHA-256 is the digest the members sign at a checkpoint
//! ([`crate::state::checkpoint_signing_bytes`]); the certificate carries their signatures. A
//! snapshot is sent only with its certificate, and installed only if the certificate verifies
//! against the members the receiving node knows ([`crate::state::verify_certificate`]). Version
//! 1 (no certificate field) is still read from this node's own files.
//!
//! One decoder, [`decode_from`], reads it everywhere, from a reader as the bytes come (the data
//! is never held whole in memory): the RaftService server validating a received snapshot before
//! openraft sees it, the state machine installing it, and the store loading its latest snapshot
//! at start. [`StreamCheck`] checks the same header, length and checksum incrementally while the
//! bytes arrive, so a stream that is not a snapshot is refused at its first chunk and a damaged
//! one before it is decoded. [`encode_to`] writes the format into a file without building it in
//! memory (the header line has fixed-width lengths and is filled in after the body).

use crate::sm_store::Applied;
use crate::state::{verify_certificate, Anchor, Bytes32, CheckpointCertificate};
use crate::{Node, NodeId};
use openraft::SnapshotMeta;
use sha2::{Digest, Sha256};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};

/// The header's magic, up to and including the `/` before the version.
pub const MAGIC: &[u8] = b"GKSNAP/";
/// The format version this node writes (it also reads version 1).
pub const VERSION: u32 = 2;
/// Longest header line accepted (`GKSNAP/2 ` + 64 hex + 2 × (` ` + 20 digits) + `\n` is 116
/// bytes).
pub const MAX_HEADER_BYTES: usize = 128;
/// Largest certificate accepted (a signature is about 150 bytes of JSON per member).
pub const MAX_CERTIFICATE_BYTES: u64 = 1 << 20;

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
    /// The certificate is missing, malformed, or does not prove the state (design.md §10.2.2).
    #[error("snapshot is not certified by a majority of the voters this node knows: {0}")]
    Uncertified(String),
    /// The data could not be read (from a file this node staged or stores): this node's
    /// failure, not the data's.
    #[error("snapshot data cannot be read: {0}")]
    Read(String),
    /// The data could not be written (this node's disk).
    #[error("snapshot data cannot be written: {0}")]
    Write(String),
}

/// A parsed header line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// SHA-256 of the body.
    pub sha256: [u8; 32],
    /// Body length in bytes.
    pub body_len: u64,
    /// Certificate length in bytes (0: none; always 0 in version 1).
    pub cert_len: u64,
    /// Length of the header line, newline included.
    pub header_len: usize,
}

/// Encodes `applied` in the snapshot format (no certificate) in memory: [`encode_to`] into a
/// buffer. Every node encodes the same state into the same body (the state holds only ordered
/// maps), so the body digests of nodes at one index agree.
pub fn encode(applied: &Applied) -> Vec<u8> {
    let mut out = io::Cursor::new(Vec::new());
    encode_to(applied, &mut out).expect("the state serializes into memory");
    out.into_inner()
}

/// The SHA-256 of the body of encoded snapshot `data` (read from its header; [`decode`] checks
/// it).
pub fn body_digest(data: &[u8]) -> Result<Bytes32, SnapshotDataError> {
    parse_header(data).map(|h| Bytes32(h.sha256))
}

/// The same snapshot with `certificate` in place of the one it had (if any)
/// ([`copy_with_certificate`] in memory).
pub fn with_certificate(
    mut data: &[u8],
    certificate: &CheckpointCertificate,
) -> Result<Vec<u8>, SnapshotDataError> {
    let mut out = Vec::with_capacity(data.len() + 1024);
    copy_with_certificate(&mut data, &mut out, certificate)?;
    Ok(out)
}

/// Checks `len` bytes of snapshot data read from `r` without decoding the state: the header,
/// the lengths, the body's SHA-256 ([`StreamCheck`] over the data as it is read) and the
/// certificate's JSON (no checksum covers it). Returns the header.
pub fn check_from<R: Read>(mut r: R, len: u64) -> Result<Header, SnapshotDataError> {
    let mut check = StreamCheck::new(len);
    let mut buf = vec![0u8; 1 << 20];
    let mut seen: u64 = 0;
    let mut cert = Vec::new();
    loop {
        let n = r.read(&mut buf).map_err(read_error)?;
        if n == 0 {
            break;
        }
        // More data than the header declares is refused by the check itself.
        check.update(&buf[..n])?;
        if let Some(h) = &check.header {
            // The certificate is the data after the body.
            let cert_start = h.header_len as u64 + h.body_len;
            let from = cert_start.saturating_sub(seen).min(n as u64) as usize;
            cert.extend_from_slice(&buf[from..n]);
        }
        seen += n as u64;
    }
    let header = check.header.clone();
    check.finish()?;
    decode_certificate(&cert)?;
    Ok(header.expect("finish refuses data without a header"))
}

/// The certificate after a snapshot's body (none if empty). Only its JSON: the signatures are
/// checked by [`crate::state::verify_certificate`].
fn decode_certificate(cert: &[u8]) -> Result<Option<CheckpointCertificate>, SnapshotDataError> {
    if cert.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(cert).map(Some).map_err(|e| {
        SnapshotDataError::Uncertified(format!("the certificate does not decode: {e}"))
    })
}

/// Checks a body once it was read whole: `seen` bytes (of `h.body_len` declared) with SHA-256
/// `digest`.
fn check_body(h: &Header, digest: [u8; 32], seen: u64) -> Result<(), SnapshotDataError> {
    if seen != h.body_len {
        return Err(SnapshotDataError::Length {
            declared: h.body_len,
            actual: seen,
        });
    }
    if digest != h.sha256 {
        return Err(SnapshotDataError::Checksum);
    }
    Ok(())
}

/// Decoded snapshot data.
#[derive(Debug, Clone)]
pub struct SnapshotData {
    /// The state.
    pub applied: Applied,
    /// SHA-256 of the body (what a checkpoint signature covers).
    pub digest: Bytes32,
    /// The certificate, if the data carries one.
    pub certificate: Option<CheckpointCertificate>,
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
    let (sum, len, cert) = match (
        version,
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        ("1", Some(sum), Some(len), None, _) => (sum, len, "0"),
        ("2", Some(sum), Some(len), Some(cert), None) => (sum, len, cert),
        ("1" | "2", ..) => {
            return Err(SnapshotDataError::BadHeader(
                "expected \"GKSNAP/2 <sha256 hex> <body length> <certificate length>\"".into(),
            ))
        }
        (v, ..) => {
            return Err(SnapshotDataError::UnsupportedVersion(
                v.chars().take(16).collect(),
            ))
        }
    };
    let sum: [u8; 32] = hex::decode(sum)
        .ok()
        .filter(|_| sum.bytes().all(|b| !b.is_ascii_uppercase()))
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            SnapshotDataError::BadHeader("checksum is not 64 lowercase hex digits".into())
        })?;
    let number = |s: &str, what: &str| -> Result<u64, SnapshotDataError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SnapshotDataError::BadHeader(format!(
                "{what} is not a decimal number"
            )));
        }
        s.parse()
            .map_err(|_| SnapshotDataError::BadHeader(format!("{what} does not fit 64 bits")))
    };
    let body_len = number(len, "body length")?;
    let cert_len = number(cert, "certificate length")?;
    if cert_len > MAX_CERTIFICATE_BYTES {
        return Err(SnapshotDataError::BadHeader(format!(
            "certificate length {cert_len} is above {MAX_CERTIFICATE_BYTES}"
        )));
    }
    Ok(Header {
        sha256: sum,
        body_len,
        cert_len,
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

/// Decodes snapshot data into the state: header (magic, version), exact length, SHA-256, the
/// full JSON decode, then the certificate's JSON (not its signatures: see
/// [`crate::state::verify_certificate`]). [`decode_from`] of bytes in memory.
pub fn decode(bytes: &[u8]) -> Result<SnapshotData, SnapshotDataError> {
    decode_from(bytes, bytes.len() as u64)
}

/// The only decoder of snapshot data: decodes the `len` bytes `r` yields as they are read, so the
/// data is never held whole in memory (a million workers' snapshot is hundreds of MB). The body's
/// SHA-256 is computed as it is read and checked once it ends (a damaged body whose JSON also
/// fails reports the checksum).
pub fn decode_from<R: BufRead>(mut r: R, len: u64) -> Result<SnapshotData, SnapshotDataError> {
    let h = read_header(&mut r)?;
    let declared = h.body_len.saturating_add(h.cert_len);
    let rest = len.saturating_sub(h.header_len as u64);
    if rest != declared {
        return Err(SnapshotDataError::Length {
            declared,
            actual: rest,
        });
    }
    let mut body = Hashing::new((&mut r).take(h.body_len));
    let decoded: Result<Applied, _> =
        serde_json::from_reader(io::BufReader::with_capacity(1 << 16, &mut body));
    // What the decoder did not read (after an error) still counts for the checksum.
    io::copy(&mut body, &mut io::sink()).map_err(read_error)?;
    let (digest, seen) = body.finish();
    check_body(&h, digest, seen)?;
    let applied = decoded.map_err(|e| match e.io_error_kind() {
        Some(_) => read_error(e.into()),
        None => SnapshotDataError::Decode(e.to_string()),
    })?;
    let mut cert = Vec::with_capacity(h.cert_len as usize);
    (&mut r)
        .take(h.cert_len)
        .read_to_end(&mut cert)
        .map_err(read_error)?;
    if cert.len() as u64 != h.cert_len {
        return Err(SnapshotDataError::Length {
            declared,
            actual: h.body_len + cert.len() as u64,
        });
    }
    Ok(SnapshotData {
        applied,
        digest: Bytes32(h.sha256),
        certificate: decode_certificate(&cert)?,
    })
}

fn read_error(e: io::Error) -> SnapshotDataError {
    SnapshotDataError::Read(e.to_string())
}

/// Reads and parses the header line at the start of `r` (at most [`MAX_HEADER_BYTES`]),
/// leaving `r` at the body.
pub fn read_header<R: BufRead>(r: &mut R) -> Result<Header, SnapshotDataError> {
    let mut line = Vec::with_capacity(MAX_HEADER_BYTES);
    r.take(MAX_HEADER_BYTES as u64)
        .read_until(b'\n', &mut line)
        .map_err(read_error)?;
    check_magic(&line)?;
    if line.len() < MAGIC.len() {
        return Err(SnapshotDataError::BadHeader(
            "the data ended inside the header line".into(),
        ));
    }
    parse_header(&line)
}

/// Length of the header line [`encode_to`] writes: lengths as 20 zero-padded digits, so the
/// line can be written before the body and filled in after it.
pub const FIXED_HEADER_BYTES: usize = MAGIC.len() + 2 + 64 + 1 + 20 + 1 + 20 + 1;

/// A header line of [`FIXED_HEADER_BYTES`].
fn fixed_header(sha256: &[u8; 32], body_len: u64, cert_len: u64) -> String {
    let line = format!(
        "GKSNAP/{VERSION} {} {body_len:020} {cert_len:020}\n",
        hex::encode(sha256)
    );
    debug_assert_eq!(line.len(), FIXED_HEADER_BYTES);
    line
}

/// Writes `applied` in the snapshot format (no certificate) at `w`'s position, the body streamed
/// through SHA-256, so the state is never encoded into memory whole. The header line is
/// written first as a placeholder and filled in once the body's length and digest are known;
/// `w` is left at the end of the body. Returns the body digest (what a checkpoint signs).
pub fn encode_to<W: Write + Seek>(applied: &Applied, w: &mut W) -> io::Result<Bytes32> {
    let start = w.stream_position()?;
    w.write_all(&[b' '; FIXED_HEADER_BYTES])?;
    let mut body = io::BufWriter::with_capacity(1 << 20, Hashing::new(&mut *w));
    serde_json::to_writer(&mut body, applied).map_err(io::Error::other)?;
    let (digest, len) = body.into_inner().map_err(|e| e.into_error())?.finish();
    w.seek(SeekFrom::Start(start))?;
    w.write_all(fixed_header(&digest, len, 0).as_bytes())?;
    w.seek(SeekFrom::Start(start + FIXED_HEADER_BYTES as u64 + len))?;
    Ok(Bytes32(digest))
}

/// Copies snapshot data from `r` (positioned at its header) to `w` with `certificate` in place
/// of the one it had, streaming the body and checking its SHA-256 as it passes (a damaged file
/// is not made into a snapshot). Returns the body digest.
pub fn copy_with_certificate<R: BufRead, W: Write>(
    r: &mut R,
    w: &mut W,
    certificate: &CheckpointCertificate,
) -> Result<Bytes32, SnapshotDataError> {
    let h = read_header(r)?;
    let cert = serde_json::to_vec(certificate).expect("certificates serialize");
    let write_error = |e: io::Error| SnapshotDataError::Write(e.to_string());
    w.write_all(fixed_header(&h.sha256, h.body_len, cert.len() as u64).as_bytes())
        .map_err(write_error)?;
    let mut body = Hashing::new(&mut *w);
    // io::copy does not say which side failed: read and write separately.
    let mut from = r.take(h.body_len);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = from.read(&mut buf).map_err(read_error)?;
        if n == 0 {
            break;
        }
        body.write_all(&buf[..n]).map_err(write_error)?;
    }
    let (digest, copied) = body.finish();
    check_body(&h, digest, copied)?;
    w.write_all(&cert).map_err(write_error)?;
    Ok(Bytes32(digest))
}

/// Hashes and counts the bytes written or read through it.
struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    len: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    fn finish(self) -> ([u8; 32], u64) {
        (self.hasher.finalize().into(), self.len)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// [`decode`]s snapshot data and checks that the state it holds is the one `meta` describes: the
/// same last applied log id and the same membership (a leader builds both from one state).
pub fn validate(
    meta: &SnapshotMeta<NodeId, Node>,
    bytes: &[u8],
) -> Result<SnapshotData, SnapshotDataError> {
    validate_from(meta, bytes, bytes.len() as u64)
}

/// [`validate`] of data read from `r` as it is decoded ([`decode_from`]).
pub fn validate_from<R: BufRead>(
    meta: &SnapshotMeta<NodeId, Node>,
    r: R,
    len: u64,
) -> Result<SnapshotData, SnapshotDataError> {
    let d = decode_from(r, len)?;
    let a = &d.applied;
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
    Ok(d)
}

/// Checks that a snapshot received from a peer proves its state: it carries a certificate for
/// its own index and body digest, signed by more than half of the voters in `local` (what this
/// node knows: [`crate::sm_store::SmStore::anchor`]), with the keys `local` holds for them. A node
/// that knows no cluster yet (an empty `local`) can only check it against the snapshot's own
/// members and voters. Returns the number of valid voter signatures.
pub fn verify_received(snapshot: &SnapshotData, local: Anchor) -> Result<usize, SnapshotDataError> {
    let cert = snapshot.certificate.as_ref().ok_or_else(|| {
        SnapshotDataError::Uncertified("the snapshot carries no certificate".into())
    })?;
    let index = snapshot.applied.last_applied.map_or(0, |l| l.index);
    let anchor = if local.is_empty() {
        snapshot.applied.anchor()
    } else {
        local
    };
    verify_certificate(cert, index, &snapshot.digest, &anchor)
        .map_err(SnapshotDataError::Uncertified)
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
    cert_seen: u64,
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
            cert_seen: 0,
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
                let declared = (h.header_len as u64)
                    .saturating_add(h.body_len)
                    .saturating_add(h.cert_len);
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
        let body_part = (h.body_len - self.body_seen).min(chunk.len() as u64) as usize;
        let (body, cert) = chunk.split_at(body_part);
        self.body_seen += body.len() as u64;
        self.hasher.update(body);
        self.cert_seen += cert.len() as u64;
        if self.cert_seen > h.cert_len {
            return Err(SnapshotDataError::Length {
                declared: h.body_len + h.cert_len,
                actual: self.body_seen + self.cert_seen,
            });
        }
        Ok(())
    }

    /// Checks that the body was complete and matches its checksum.
    pub fn finish(self) -> Result<(), SnapshotDataError> {
        let Some(h) = self.header else {
            return Err(SnapshotDataError::BadHeader(
                "the data ended inside the header line".into(),
            ));
        };
        if self.body_seen != h.body_len || self.cert_seen != h.cert_len {
            return Err(SnapshotDataError::Length {
                declared: h.body_len + h.cert_len,
                actual: self.body_seen + self.cert_seen,
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
        assert!(data.starts_with(b"GKSNAP/2 "));
        // The body is the state's JSON, its digest that JSON's SHA-256.
        let json = serde_json::to_vec(&a).unwrap();
        assert_eq!(&data[FIXED_HEADER_BYTES..], &json[..]);
        let back = decode(&data).unwrap();
        assert_eq!(back.digest.0, <[u8; 32]>::from(Sha256::digest(&json)));
        assert_eq!(back.applied.state, a.state);
        assert_eq!(back.applied.last_applied, a.last_applied);
        assert_eq!(back.certificate, None);
        for chunk in [1, 7, 95, 96, 1000, data.len()] {
            stream(&data, data.len() as u64, chunk).unwrap();
        }
        // With a certificate: same body digest, the certificate decodes, framing streams.
        let cert = crate::state::CheckpointCertificate {
            index: 9,
            digest: back.digest,
            signatures: [(1, crate::state::HexBytes(vec![3; 64]))]
                .into_iter()
                .collect(),
            voters: [1].into(),
        };
        let certified = with_certificate(&data, &cert).unwrap();
        let d = decode(&certified).unwrap();
        assert_eq!(d.digest, back.digest);
        assert_eq!(d.certificate.as_ref(), Some(&cert));
        assert_eq!(body_digest(&certified).unwrap(), back.digest);
        for chunk in [1, 7, 116, 1000, certified.len()] {
            stream(&certified, certified.len() as u64, chunk).unwrap();
        }
        // Replacing the certificate keeps the body.
        let again = with_certificate(&certified, &cert).unwrap();
        assert_eq!(again, certified);
        // Version 1 (no certificate field) still decodes.
        let body = serde_json::to_string(&a).unwrap();
        let v1 = format!(
            "GKSNAP/1 {} {}\n{body}",
            hex::encode(Sha256::digest(body.as_bytes())),
            body.len()
        );
        assert_eq!(decode(v1.as_bytes()).unwrap().applied.state, a.state);
        // Encoded straight into a file after other bytes: a fixed-width header filled in after
        // the body, the same body and digest, the writer left at the end of the body.
        let mut file = io::Cursor::new(b"prefix".to_vec());
        file.seek(SeekFrom::End(0)).unwrap();
        let digest = encode_to(&a, &mut file).unwrap();
        assert_eq!(digest, back.digest);
        let written = file.into_inner();
        let streamed = &written[6..];
        assert_eq!(streamed[..FIXED_HEADER_BYTES].last(), Some(&b'\n'));
        assert_eq!(&streamed[FIXED_HEADER_BYTES..], &json[..]);
        let d = decode_from(
            io::BufReader::with_capacity(7, streamed),
            streamed.len() as u64,
        )
        .unwrap();
        assert_eq!((d.applied.state, d.digest), (a.state.clone(), back.digest));
        // A certificate copied in: what with_certificate makes, decodable.
        let mut out = Vec::new();
        copy_with_certificate(&mut &streamed[..], &mut out, &cert).unwrap();
        assert_eq!(out, certified);
    }

    #[test]
    fn a_received_snapshot_needs_a_certificate_a_known_majority_signed() {
        use crate::state::MemberRecord;
        use crate::state::{checkpoint_signing_bytes, CheckpointCertificate, HexBytes};
        use keyring::Sr25519Keypair;
        let key = |n: u8| Sr25519Keypair::from_seed(&[n; 32]);
        let mut a = applied();
        a.state.gatekeeper_id = Some(Bytes32([7; 32]));
        for n in 1..=3u8 {
            a.state.members.insert(
                n.into(),
                MemberRecord::for_tests(n.into(), Bytes32(*key(n).public_key().as_bytes())),
            );
        }
        a.last_membership = openraft::StoredMembership::new(
            None,
            openraft::Membership::new(vec![[1, 2, 3].into()], None),
        );
        let plain = decode(&encode(&a)).unwrap();
        let e = verify_received(&plain, a.anchor()).unwrap_err();
        assert!(e.to_string().contains("carries no certificate"), "{e}");
        let sign = |n: u8| {
            let m = checkpoint_signing_bytes(&Bytes32([7; 32]), 9, &plain.digest);
            let s = keyring::sign::sign(&key(n), keyring::sign::SigningPurpose::Command, &m).0;
            (NodeId::from(n), HexBytes(s.to_vec()))
        };
        let cert = |signers: &[u8]| CheckpointCertificate {
            index: 9,
            digest: plain.digest,
            signatures: signers.iter().map(|&n| sign(n)).collect(),
            voters: Default::default(),
        };
        let with =
            |c: &CheckpointCertificate| decode(&with_certificate(&encode(&a), c).unwrap()).unwrap();
        assert_eq!(verify_received(&with(&cert(&[1, 3])), a.anchor()), Ok(2));
        assert!(verify_received(&with(&cert(&[2])), a.anchor()).is_err());
        // A node with no state checks against the snapshot's own members (trust on first use);
        // a node that knows other keys for those voters refuses it.
        assert_eq!(
            verify_received(&with(&cert(&[1, 2])), Anchor::default()),
            Ok(2)
        );
        let mut other = a.clone();
        other.state.members.get_mut(&1).unwrap().identity_public_key = Bytes32([1; 32]);
        other.state.members.get_mut(&2).unwrap().identity_public_key = Bytes32([2; 32]);
        assert!(verify_received(&with(&cert(&[1, 2])), other.anchor()).is_err());
    }

    #[test]
    fn every_damage_is_refused_with_its_reason() {
        let data = encode(&applied());
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
        let mut v3 = data.clone();
        v3[7] = b'3';
        assert!(matches!(
            decode(&v3).unwrap_err(),
            SnapshotDataError::UnsupportedVersion(v) if v == "3"
        ));
        // A certificate that is not one, or longer than allowed.
        let body = serde_json::to_string(&applied()).unwrap();
        let sum = hex::encode(Sha256::digest(body.as_bytes()));
        let junk = format!("GKSNAP/2 {sum} {} 3\n{body}xyz", body.len());
        assert!(matches!(
            decode(junk.as_bytes()).unwrap_err(),
            SnapshotDataError::Uncertified(m) if m.contains("does not decode")
        ));
        // The check without decoding the state reads the certificate too (no checksum covers
        // it), and passes whole data.
        assert!(matches!(
            check_from(junk.as_bytes(), junk.len() as u64).unwrap_err(),
            SnapshotDataError::Uncertified(m) if m.contains("does not decode")
        ));
        assert_eq!(
            check_from(data.as_slice(), total).unwrap().body_len,
            body.len() as u64
        );
        let huge = format!("GKSNAP/2 {sum} {} 99999999\n{body}", body.len());
        assert!(matches!(
            decode(huge.as_bytes()).unwrap_err(),
            SnapshotDataError::BadHeader(m) if m.contains("certificate length")
        ));
        // A header line that never ends.
        let long = [MAGIC, b"2 ".as_slice(), &[b'a'; 200]].concat();
        assert!(matches!(
            decode(&long).unwrap_err(),
            SnapshotDataError::BadHeader(_)
        ));
        assert!(matches!(
            stream(&long, long.len() as u64, 10).unwrap_err(),
            SnapshotDataError::BadHeader(_)
        ));
        // Uppercase or short checksums, non-numeric lengths.
        let upper = format!("GKSNAP/2 {} 2 0\n{{}}", "AB".repeat(32));
        assert!(matches!(
            decode(upper.as_bytes()).unwrap_err(),
            SnapshotDataError::BadHeader(_)
        ));
        let short = format!("GKSNAP/2 {} 2 0\n{{}}", "ab".repeat(31));
        assert!(matches!(
            decode(short.as_bytes()).unwrap_err(),
            SnapshotDataError::BadHeader(_)
        ));
        let bad_len = format!("GKSNAP/2 {} 12x 0\n{{}}", "0".repeat(64));
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
            let mut framed = format!("GKSNAP/2 {sum} {} 0\n", body.len()).into_bytes();
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
        validate(&meta(a.last_applied), &data).unwrap();
        let other = Some(LogId::new(CommittedLeaderId::new(2, 1), 10));
        assert!(matches!(
            validate(&meta(other), &data).unwrap_err(),
            SnapshotDataError::Inconsistent(m) if m.contains("last applied")
        ));
        let mut m = meta(a.last_applied);
        m.last_membership = openraft::StoredMembership::new(other, Default::default());
        assert!(matches!(
            validate(&m, &data).unwrap_err(),
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
