//! Group commit: proposals that arrive while earlier ones are being committed share one log
//! entry.
//!
//! openraft 0.9 appends each client write on its own and waits for that append's fsync before
//! it takes the next, so one entry per proposal caps writes at one fsync each, whatever the
//! number of clients. The [`Batcher`] keeps at most [`IN_FLIGHT`] entries of its own in
//! openraft; what arrives meanwhile goes into the next entry, framed by [`encode`]. A single
//! waiting proposal is proposed as it is (no framing), so a lone writer pays nothing.
//!
//! Every proposal in a batch keeps its own proof and is checked and applied on its own
//! ([`crate::state::GatekeeperState::apply_entry`]) in order; the entry's reply is the framed
//! list of their replies. A batch only groups: it adds no authority, and a malformed one is
//! refused as a whole at apply ([`decode`] is the one decoder, pure and bounded).

use crate::{Command, NodeId, TypeConfig};
use openraft::error::ClientWriteError;
use openraft::{LogId, Raft};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Starts every batch entry: bytes no proposal starts with (proposals are JSON objects).
pub const MAGIC: &[u8] = b"\0gk-batch-v1\0";
/// Most proposals in one batch.
pub const MAX_ITEMS: usize = 1024;
/// Most proposal bytes gathered into one batch (a larger single proposal goes alone).
pub const MAX_BYTES: usize = 1 << 20;
/// Batch entries of this node in openraft at once; what arrives meanwhile waits for the next.
pub const IN_FLIGHT: usize = 2;

/// Frames `items` as one batch entry (also the framing of a batch's replies).
pub fn encode<T: AsRef<[u8]>>(items: &[T]) -> Vec<u8> {
    let total: usize = items.iter().map(|i| i.as_ref().len() + 4).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + total);
    out.extend_from_slice(MAGIC);
    for item in items {
        let item = item.as_ref();
        out.extend_from_slice(&(item.len() as u32).to_be_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// The items of a batch entry; `None` when `bytes` is not a batch (a single proposal). A batch
/// holds 1 to [`MAX_ITEMS`] items, each a 4-byte big-endian length and that many bytes, and
/// nothing after the last.
pub fn decode(bytes: &[u8]) -> Option<Result<Vec<&[u8]>, String>> {
    let mut rest = bytes.strip_prefix(MAGIC)?;
    let mut items = Vec::new();
    Some(loop {
        if rest.is_empty() {
            break match items.len() {
                0 => Err("a batch entry holds no proposal".to_string()),
                _ => Ok(items),
            };
        }
        if items.len() == MAX_ITEMS {
            break Err(format!(
                "a batch entry holds more than {MAX_ITEMS} proposals"
            ));
        }
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            break Err("a batch entry ends inside a length".to_string());
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > tail.len() {
            break Err(format!(
                "a batch item of {len} bytes runs past the end of its entry"
            ));
        }
        let (item, tail) = tail.split_at(len);
        items.push(item);
        rest = tail;
    })
}

/// Why a proposal given to the [`Batcher`] was not committed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// This node is not the leader (openraft names the one it knows, if any).
    #[error("not the leader")]
    ForwardToLeader(Option<NodeId>),
    /// Raft stopped, or the entry's reply could not be split among its proposals.
    #[error("{0}")]
    Raft(String),
}

/// A committed proposal: its entry's log id and its own reply.
pub type Committed = (LogId<NodeId>, Vec<u8>);

/// Where a submitted proposal's outcome arrives.
pub type Receipt = oneshot::Receiver<Result<Committed, BatchError>>;

struct Pending {
    bytes: Vec<u8>,
    done: oneshot::Sender<Result<Committed, BatchError>>,
}

/// Proposes what it is given through the local Raft, grouping what arrives while its earlier
/// entries are being committed. Proposals keep their order of submission in the log. Cheap to
/// clone; the task stops when the last clone is dropped.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Batcher {
    /// Starts the batching task for `raft` (inside a tokio runtime).
    pub fn start(raft: Raft<TypeConfig>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        Self { tx }
    }

    /// Queues `bytes` (one encoded proposal) behind those submitted before it.
    pub fn submit(&self, bytes: Vec<u8>) -> Receipt {
        let (done, receipt) = oneshot::channel();
        if let Err(mpsc::error::SendError(p)) = self.tx.send(Pending { bytes, done }) {
            let _ = p
                .done
                .send(Err(BatchError::Raft("the proposal batcher stopped".into())));
        }
        receipt
    }

    /// [`Batcher::submit`] and wait for the outcome.
    pub async fn write(&self, bytes: Vec<u8>) -> Result<Committed, BatchError> {
        settle(self.submit(bytes)).await
    }
}

/// The outcome a [`Receipt`] brings.
pub async fn settle(receipt: Receipt) -> Result<Committed, BatchError> {
    receipt
        .await
        .unwrap_or_else(|_| Err(BatchError::Raft("the proposal batcher stopped".into())))
}

async fn run(raft: Raft<TypeConfig>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Not the leader: say so at once (the caller forwards), rather than wait for a slot that
        // entries left from its leadership may hold until they are applied or truncated.
        let not_leader = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.state != openraft::ServerState::Leader).then_some(m.current_leader)
        };
        if let Some(leader) = not_leader {
            let _ = first.done.send(Err(BatchError::ForwardToLeader(leader)));
            continue;
        }
        // Wait for a slot first: what arrives meanwhile joins this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes.len();
        let mut batch = vec![first];
        while batch.len() < MAX_ITEMS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.bytes.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        // Proposals whose callers gave up are not proposed.
        batch.retain(|p| !p.done.is_closed());
        if batch.is_empty() {
            continue;
        }
        let entry = match batch.as_slice() {
            [one] => one.bytes.clone(),
            many => encode(&many.iter().map(|p| &p.bytes).collect::<Vec<_>>()),
        };
        match raft.client_write_ff(Command(entry)).await {
            Ok(response) => {
                tokio::spawn(async move {
                    let outcome = match response.await {
                        Ok(Ok(r)) => Ok((r.log_id, r.data.0)),
                        Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                            Err(BatchError::ForwardToLeader(f.leader_id))
                        }
                        Ok(Err(e)) => Err(BatchError::Raft(e.to_string())),
                        Err(e) => Err(BatchError::Raft(format!("raft dropped the write: {e}"))),
                    };
                    drop(slot);
                    deliver(batch, outcome);
                });
            }
            Err(fatal) => deliver(batch, Err(BatchError::Raft(fatal.to_string()))),
        }
    }
}

/// Gives each proposal of `batch` its own reply.
fn deliver(batch: Vec<Pending>, outcome: Result<Committed, BatchError>) {
    let (log_id, reply) = match outcome {
        Ok(ok) => ok,
        Err(e) => {
            for p in batch {
                let _ = p.done.send(Err(e.clone()));
            }
            return;
        }
    };
    if batch.len() == 1 {
        if let Some(p) = batch.into_iter().next() {
            let _ = p.done.send(Ok((log_id, reply)));
        }
        return;
    }
    match decode(&reply) {
        Some(Ok(replies)) if replies.len() == batch.len() => {
            for (p, r) in batch.into_iter().zip(replies) {
                let _ = p.done.send(Ok((log_id, r.to_vec())));
            }
        }
        // One reply for the whole entry: it was refused as a whole.
        None => {
            for p in batch {
                let _ = p.done.send(Ok((log_id, reply.clone())));
            }
        }
        _ => {
            for p in batch {
                let _ = p.done.send(Err(BatchError::Raft(format!(
                    "the reply of batch entry {log_id} does not match its proposals"
                ))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let items: Vec<Vec<u8>> = vec![b"{\"a\":1}".to_vec(), Vec::new(), vec![0xff; 300]];
        let e = encode(&items);
        let d = decode(&e).unwrap().unwrap();
        assert_eq!(d, items.iter().map(|i| i.as_slice()).collect::<Vec<_>>());
    }

    #[test]
    fn a_single_proposal_is_not_a_batch() {
        assert!(decode(b"{\"v\":1}").is_none());
        assert!(decode(b"").is_none());
        assert!(decode(&MAGIC[..MAGIC.len() - 1]).is_none());
    }

    #[test]
    fn malformed_batches_are_refused() {
        let empty = encode::<Vec<u8>>(&[]);
        assert_eq!(
            decode(&empty).unwrap().unwrap_err(),
            "a batch entry holds no proposal"
        );
        let mut cut = encode(&[b"abc".to_vec()]);
        cut.pop();
        assert!(decode(&cut)
            .unwrap()
            .unwrap_err()
            .contains("runs past the end"));
        let mut torn = encode(&[b"abc".to_vec()]);
        torn.extend_from_slice(&[0, 0]);
        assert!(decode(&torn)
            .unwrap()
            .unwrap_err()
            .contains("inside a length"));
        let too_many = encode(&vec![Vec::<u8>::new(); MAX_ITEMS + 1]);
        assert!(decode(&too_many)
            .unwrap()
            .unwrap_err()
            .contains("more than"));
        let most = encode(&vec![Vec::<u8>::new(); MAX_ITEMS]);
        assert_eq!(decode(&most).unwrap().unwrap().len(), MAX_ITEMS);
    }

    /// `n` pending proposals and the receivers of their outcomes.
    fn pending(n: u8) -> (Vec<Pending>, Vec<Receipt>) {
        (0..n)
            .map(|i| {
                let (done, rx) = oneshot::channel();
                (
                    Pending {
                        bytes: vec![i],
                        done,
                    },
                    rx,
                )
            })
            .unzip()
    }

    #[test]
    fn replies_are_split_in_order_and_a_whole_refusal_reaches_everyone() {
        let id = LogId::new(openraft::CommittedLeaderId::new(1, 1), 9);
        let (batch, rxs) = pending(3);
        deliver(batch, Ok((id, encode(&[b"r0", b"r1", b"r2"]))));
        for (i, mut rx) in rxs.into_iter().enumerate() {
            let (l, r) = rx.try_recv().unwrap().unwrap();
            assert_eq!((l, r), (id, format!("r{i}").into_bytes()));
        }
        let (batch, rxs) = pending(2);
        deliver(batch, Ok((id, b"{\"Rejected\":{}}".to_vec())));
        for mut rx in rxs {
            assert_eq!(rx.try_recv().unwrap().unwrap().1, b"{\"Rejected\":{}}");
        }
        // A reply that does not match the batch is an error for every proposal, not a guess.
        let (batch, rxs) = pending(2);
        deliver(batch, Ok((id, encode(&[b"only one"]))));
        for mut rx in rxs {
            assert!(rx.try_recv().unwrap().is_err());
        }
    }
}
