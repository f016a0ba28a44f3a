//! Delivery acks written behind.
//!
//! Cursors are cumulative, so a node keeps only the highest acked seq per
//! (user, device, conversation) in memory and writes them to the offline service
//! in one `AckBatch` call (one transaction) every `ack_flush_ms`, or at once
//! when `ack_buffer_max` entries wait. A crash of the node loses at most
//! that window of cursor movement: the client is then sent those messages
//! again and drops them by `message_id`, as it does any redelivery. Nothing
//! acknowledged to a sender depends on a cursor, so no message is lost.
//!
//! Until a coalesced ack is written, this node answers with it: a session's
//! sync and the unread counts of `GET /api/conversations` read cursors
//! through [`AckBuffer::latest`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tern_proto::{
    clients::OfflineClient,
    pb::offline::{AckBatchRequest, AckRequest},
};
use tern_runtime::grpc::GrpcChannel;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Most acks in one `AckBatch` call (the offline service's limit).
const MAX_CALL: usize = 10_000;

/// (user, device, conversation).
type Key = (u64, Arc<str>, String);

/// Acks not written yet. One lock over both maps, so a reader never sees
/// an ack between the two (taken from `pending`, not yet in `writing`).
#[derive(Default)]
struct Maps {
    /// Waiting for the next flush.
    pending: HashMap<Key, u64>,
    /// Being written by the flush in progress.
    writing: HashMap<Key, u64>,
}

/// The acks of this node's sessions not yet written.
pub struct AckBuffer {
    maps: Mutex<Maps>,
    /// Wakes the flusher early.
    wake: Notify,
    /// Entries that trigger a flush before the interval is up.
    max: usize,
}

impl AckBuffer {
    pub fn new(max: usize) -> Self {
        Self { maps: Mutex::default(), wake: Notify::new(), max: max.max(1) }
    }

    /// Records that `user`'s `device` received everything up to `seq`.
    pub fn record(&self, user: u64, device: &Arc<str>, conversation: String, seq: u64) {
        let mut maps = self.maps.lock().expect("ack buffer poisoned");
        let entry = maps.pending.entry((user, device.clone(), conversation)).or_default();
        *entry = (*entry).max(seq);
        if maps.pending.len() >= self.max {
            self.wake.notify_one();
        }
    }

    /// The highest ack of `user`'s `device` in `conversation` this node
    /// holds but may not have written yet.
    pub fn latest(&self, user: u64, device: &Arc<str>, conversation: &str) -> Option<u64> {
        let key = (user, device.clone(), conversation.to_string());
        let maps = self.maps.lock().expect("ack buffer poisoned");
        maps.pending.get(&key).copied().max(maps.writing.get(&key).copied())
    }

    /// Every ack of `user`'s `device` this node holds but may not have
    /// written yet, by conversation. Taken *before* reading cursors from
    /// storage, it misses nothing: an ack that leaves the buffer after this
    /// call was written before it left, so the storage read that follows
    /// sees it.
    pub fn of_device(&self, user: u64, device: &str) -> HashMap<String, u64> {
        let maps = self.maps.lock().expect("ack buffer poisoned");
        let mut acks = HashMap::new();
        for ((u, d, conversation), &seq) in maps.pending.iter().chain(&maps.writing) {
            if *u == user && **d == *device {
                let entry = acks.entry(conversation.clone()).or_default();
                *entry = seq.max(*entry);
            }
        }
        acks
    }

    /// Asks for a flush now (a session closed: its user may reconnect on
    /// another node, which reads cursors from storage).
    pub fn flush_soon(&self) {
        self.wake.notify_one();
    }

    /// Writes what is pending. On failure the acks go back to pending and
    /// are retried with the next flush.
    async fn flush(&self, offline: &mut OfflineClient<GrpcChannel>) {
        let batch = {
            let mut maps = self.maps.lock().expect("ack buffer poisoned");
            let batch = std::mem::take(&mut maps.pending);
            maps.writing.clone_from(&batch);
            batch
        };
        if batch.is_empty() {
            return;
        }
        let acks: Vec<AckRequest> = batch
            .iter()
            .map(|((user_id, device, conversation_id), &seq)| AckRequest {
                user_id: *user_id,
                conversation_id: conversation_id.clone(),
                seq,
                device: device.to_string(),
            })
            .collect();
        let mut failed = None;
        for chunk in acks.chunks(MAX_CALL) {
            let request = AckBatchRequest { acks: chunk.to_vec() };
            if let Err(status) = offline.ack_batch(request).await {
                failed = Some(status);
                break;
            }
        }
        if let Some(status) = failed {
            tracing::warn!(acks = batch.len(), error = %status, "acks not written; retrying");
            metrics::counter!("tern_gateway_ack_flush_failures_total").increment(1);
            let mut maps = self.maps.lock().expect("ack buffer poisoned");
            for (key, seq) in batch {
                let entry = maps.pending.entry(key).or_default();
                *entry = (*entry).max(seq);
            }
        }
        self.maps.lock().expect("ack buffer poisoned").writing.clear();
    }
}

/// Flushes `buffer` every `interval` (sooner when it fills up) until
/// `shutdown`, then once more.
pub async fn run(
    buffer: Arc<AckBuffer>,
    mut offline: OfflineClient<GrpcChannel>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
            _ = buffer.wake.notified() => {}
        }
        buffer.flush(&mut offline).await;
    }
    buffer.flush(&mut offline).await;
}
