//! The writing side of a session. It owns the socket's write half and is
//! the only place that decides what a client receives and in which order:
//! offline backlog first, then live messages, with duplicates dropped and
//! gaps filled from storage, so each conversation arrives in seq order.

use crate::{
    Delivery, Outbound,
    acks::AckBuffer,
    batch_writer::BatchWriter,
    protocol::{self, close},
    stats::Stats,
    sync_reads::SyncReads,
};
use backon::{ExponentialBuilder, Retryable};
use fastwebsockets::{Frame, Payload};
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};
use tern_proto::{
    ErrorCode, conversation, error_code_of,
    pb::{
        message::Message,
        offline::{ListBacklogRequest, PullRequest},
    },
};
use tokio::{io::AsyncWrite, sync::oneshot};
use tokio_util::sync::CancellationToken;

/// Retries of a failed sync read: a service restarting (or a moment of
/// database trouble) is ridden out within about 3 s instead of closing
/// every session that needed a read with 1013 at once.
fn sync_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_max_times(5)
        .with_jitter()
}

/// Runs a storage read, retrying it with [`sync_backoff`] while it fails
/// with `unavailable`.
async fn read_retrying<T, F, Fut>(read: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let retryable = |s: &tonic::Status| error_code_of(s) == ErrorCode::Unavailable;
    read.retry(sync_backoff()).when(retryable).await
}

/// Why the writer stopped.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("socket: {0}")]
    Socket(String),
    #[error("sync failed: {0}")]
    Sync(#[from] tonic::Status),
}

/// The highest seq written to one client, per conversation. Shared with the
/// session's reading side: a delivery ack up to it needs no check against
/// storage, since the client can only have seen what was written to it.
#[derive(Clone, Default)]
pub struct Written(Arc<Mutex<HashMap<String, u64>>>);

impl Written {
    fn get(&self, conversation: &str) -> Option<u64> {
        self.0.lock().expect("written map poisoned").get(conversation).copied()
    }

    fn set(&self, conversation: &str, seq: u64) {
        let mut map = self.0.lock().expect("written map poisoned");
        match map.get_mut(conversation) {
            Some(last) => *last = seq,
            None => {
                map.insert(conversation.to_string(), seq);
            }
        }
    }

    /// Moves `conversation` to `seq` if that is the next seq after what
    /// was written (the device's own message, which it is not sent). A
    /// conversation this session has not seen whose first message this is
    /// (one the user just started) starts at it.
    fn follow(&self, conversation: &str, seq: u64) {
        let mut map = self.0.lock().expect("written map poisoned");
        match map.get_mut(conversation) {
            Some(last) if *last + 1 == seq => *last = seq,
            None if seq == 1 => {
                map.insert(conversation.to_string(), seq);
            }
            _ => {}
        }
    }

    /// The other users of the 1:1 conversations written so far (after the
    /// first sync: every 1:1 conversation of `user`).
    pub fn direct_peers(&self, user: u64) -> Vec<u64> {
        let map = self.0.lock().expect("written map poisoned");
        map.keys().filter_map(|id| conversation::parse(id)?.peer_of(user)).collect()
    }

    /// Whether everything up to `seq` of `conversation` was written.
    pub fn covers(&self, conversation: &str, seq: u64) -> bool {
        self.get(conversation).is_some_and(|last| seq <= last)
    }
}

/// Writes frames for one session.
pub struct Pusher<W> {
    /// Frames are added to the batch without waiting; only a flush waits.
    out: BatchWriter<W>,
    user: u64,
    /// The session's device: it has its own cursors, and is not sent the
    /// messages it sent itself.
    device: Arc<str>,
    /// Backlog listings (batched with other sessions') and pulls.
    reads: Arc<SyncReads>,
    /// Highest seq written to this client, per conversation.
    pushed: Written,
    /// This node's acks not yet written, which are newer than the cursors
    /// storage holds.
    acks: Arc<AckBuffer>,
    page: u32,
    stats: Arc<Stats>,
    /// Messages written so far, to measure each sync.
    pushed_count: u64,
    /// Set by the dispatcher when it had to drop a live message.
    needs_resync: Arc<AtomicBool>,
    /// A write slower than this means the client stopped reading.
    write_timeout: Duration,
    /// Told once the first sync is done (`pushed` then lists every
    /// conversation of the user).
    synced: Option<oneshot::Sender<()>>,
}

impl<W: AsyncWrite + Unpin> Pusher<W> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        out: BatchWriter<W>,
        user: u64,
        device: Arc<str>,
        reads: Arc<SyncReads>,
        pushed: Written,
        acks: Arc<AckBuffer>,
        page: u32,
        stats: Arc<Stats>,
        needs_resync: Arc<AtomicBool>,
        write_timeout: Duration,
    ) -> Self {
        Self {
            out,
            user,
            device,
            reads,
            pushed,
            acks,
            page,
            stats,
            pushed_count: 0,
            needs_resync,
            write_timeout,
            synced: None,
        }
    }

    /// Has `synced` told once the first sync is done.
    pub fn tell_when_synced(mut self, synced: oneshot::Sender<()>) -> Self {
        self.synced = Some(synced);
        self
    }

    /// Sends the backlog, then serves the queue until it closes, `cancel`
    /// fires (a kick that could not be queued) or the socket fails.
    ///
    /// Not an `async fn`: the arguments of one are copied into its future
    /// once more when it starts, and this future lives as long as the
    /// session.
    #[allow(clippy::manual_async_fn)] // the point: see above
    pub fn run(
        mut self,
        rx: flume::Receiver<Outbound>,
        cancel: CancellationToken,
    ) -> impl Future<Output = ()> {
        async move {
            self.needs_resync.store(false, Relaxed);
            // Storage reads are boxed: they are rare, and inline they would size
            // the state this future keeps for the whole session.
            let synced = Box::pin(self.sync_backlog(true)).await;
            // How much a client had waiting when it connected.
            metrics::histogram!("tern_gateway_offline_backlog_messages")
                .record(self.pushed_count as f64);
            if let Err(error) = synced {
                tracing::warn!(user_id = self.user, %error, "initial sync failed");
                let _ = self.close(close::TRY_AGAIN_LATER, "sync failed, reconnect").await;
                return;
            }
            if let Some(synced) = self.synced.take() {
                let _ = synced.send(());
            }
            loop {
                let item = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => {
                        let _ = self.close(close::KICKED, "another session took over").await;
                        return;
                    }
                    item = rx.recv_async() => item.ok(),
                };
                let Some(item) = item else { return };
                let result = self.handle(item).await;
                if matches!(result, Ok(true)) && self.needs_resync.swap(false, Relaxed) {
                    metrics::counter!("tern_gateway_resyncs_total").increment(1);
                    // A healthy socket stays open when storage cannot be read
                    // right now: the resync is tried again after the next item
                    // (at the latest the client's next heartbeat answer).
                    if let Err(error) = Box::pin(self.sync_backlog(false)).await {
                        tracing::warn!(user_id = self.user, %error, "resync failed; retrying later");
                        self.needs_resync.store(true, Relaxed);
                    }
                }
                match result {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => {
                        tracing::debug!(user_id = self.user, %error, "session writer stopped");
                        if matches!(error, Stop::Sync(_)) {
                            let _ =
                                self.close(close::TRY_AGAIN_LATER, "sync failed, reconnect").await;
                        }
                        return;
                    }
                }
                // Writes only fill the batch; a client that stopped reading
                // shows here, and its session ends like on a failed write.
                if (rx.is_empty() || self.out.full())
                    && let Err(error) = self.flush().await
                {
                    tracing::debug!(user_id = self.user, %error, "session writer stopped");
                    return;
                }
            }
        }
    }

    /// Handles one queued item; `false` when the session is over.
    async fn handle(&mut self, item: Outbound) -> Result<bool, Stop> {
        match item {
            Outbound::Text(text) => self.text(text.into_bytes()),
            Outbound::SendAck(answer) => {
                let crate::SendAnswer { frame, conversation_id, seq } = *answer;
                self.text(frame.into_bytes());
                self.pushed.follow(&conversation_id, seq);
            }
            Outbound::Deliver(delivery) => self.deliver(&delivery).await?,
            Outbound::Resync => self.needs_resync.store(true, Relaxed),
            Outbound::Echo(_) => {}
            Outbound::Pong(payload) => self.write(Frame::pong(Payload::Owned(*payload))),
            Outbound::Close(close) => {
                let (code, reason) = *close;
                self.close(code, reason).await?;
                return Ok(false);
            }
            Outbound::Kick(reason) => {
                self.text(protocol::kicked(&reason).into_bytes());
                self.close(close::KICKED, &reason).await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every conversation's messages beyond what was pushed (or, for
    /// conversations not pushed yet, beyond the cursor), in seq order. The
    /// first sync of a session lists every conversation, so that each
    /// starts at its cursor and a live message that follows it is written
    /// without a storage read.
    async fn sync_backlog(&mut self, first: bool) -> Result<(), Stop> {
        let request = ListBacklogRequest {
            user_id: self.user,
            include_read: first,
            device: self.device.to_string(),
            // A small backlog comes with the listing: no `Pull` for it.
            page: self.page,
            // Taken before the read: see `AckBuffer::of_device`. A cursor
            // the device has no row for yet starts at these.
            unwritten_acks: self.acks.of_device(self.user, &self.device),
        };
        let buffered = &request.unwritten_acks;
        let backlog = read_retrying(|| self.reads.list(request.clone())).await?.conversations;
        for conversation in backlog {
            let id = &conversation.conversation_id;
            let after = match self.pushed.get(id) {
                Some(written) => written,
                None => {
                    let acked = buffered.get(id).copied().unwrap_or(0);
                    let start = conversation.acked_seq.max(acked);
                    self.pushed.set(id, start);
                    start
                }
            };
            // The listing's page follows the stored cursor; it is used when
            // it follows on from what was written (otherwise `catch_up`
            // pulls from there).
            if conversation.messages.first().is_some_and(|m| m.seq <= after + 1) {
                self.write_page(id, after, &conversation.messages).await?;
            }
            self.catch_up(id, conversation.latest_seq).await?;
        }
        self.flush().await
    }

    /// Pushes a live message unless it was already pushed; fills the gap
    /// first when earlier messages of its conversation are missing.
    async fn deliver(&mut self, delivery: &Delivery) -> Result<(), Stop> {
        match self.pushed.get(&delivery.conversation_id) {
            Some(last) if delivery.seq <= last => Ok(()),
            Some(last) if delivery.seq == last + 1 => {
                self.counted(delivery.created_at_ms);
                self.write(Frame::text(Payload::Borrowed(&delivery.frame)));
                self.pushed.set(&delivery.conversation_id, delivery.seq);
                Ok(())
            }
            // A gap, or a conversation this session has not seen yet: read
            // storage from what was pushed (or from the cursor) up to here.
            _ => match Box::pin(self.catch_up(&delivery.conversation_id, delivery.seq)).await {
                // The user left the conversation after the push was routed
                // (member lists are cached briefly): nothing to deliver.
                Err(Stop::Sync(status)) if error_code_of(&status) == ErrorCode::Forbidden => Ok(()),
                // Storage cannot be read now: keep the socket and fill the
                // gap with the next sync.
                Err(Stop::Sync(status)) => {
                    tracing::warn!(user_id = self.user, error = %status, "gap fill failed; resyncing later");
                    self.needs_resync.store(true, Relaxed);
                    Ok(())
                }
                other => other,
            },
        }
    }

    /// Pulls and pushes a conversation until `target` seq has been pushed.
    async fn catch_up(&mut self, conversation_id: &str, target: u64) -> Result<(), Stop> {
        loop {
            let after = self
                .pushed
                .get(conversation_id)
                .or_else(|| self.acks.latest(self.user, &self.device, conversation_id));
            if after.is_some_and(|a| a >= target) {
                return Ok(());
            }
            let request = PullRequest {
                user_id: self.user,
                conversation_id: conversation_id.to_string(),
                after_seq: after,
                limit: self.page,
                device: self.device.to_string(),
            };
            let page = read_retrying(|| self.reads.pull(request.clone())).await?;
            self.write_page(conversation_id, after.unwrap_or(page.acked_seq), &page.messages)
                .await?;
            if page.messages.is_empty() {
                return Ok(());
            }
            self.flush().await?;
        }
    }

    /// Writes the messages of a page beyond `after` (what was written, or
    /// the cursor), in seq order, and records how far the conversation
    /// was written.
    async fn write_page(
        &mut self,
        conversation_id: &str,
        after: u64,
        messages: &[Message],
    ) -> Result<(), Stop> {
        let mut last = after;
        for message in messages {
            if message.seq > last {
                // A device's own messages count as delivered to it.
                if message.sender_id != self.user || *message.sender_device != *self.device {
                    self.push(message);
                    if self.out.full() {
                        self.flush().await?;
                    }
                }
                last = message.seq;
            }
        }
        self.pushed.set(conversation_id, last);
        Ok(())
    }

    fn push(&mut self, message: &Message) {
        self.counted(message.created_at_ms);
        self.text(protocol::delivered(message).into_bytes());
    }

    /// Counts a message about to be written.
    fn counted(&mut self, created_at_ms: i64) {
        self.stats.messages_out.add(1);
        self.pushed_count += 1;
        let age = (tern_runtime::clock::now_ms() - created_at_ms).max(0) as f64 / 1000.0;
        self.stats.ack_deliver_seconds.record(age);
    }

    fn text(&mut self, bytes: Vec<u8>) {
        self.write(Frame::text(Payload::Owned(bytes)));
    }

    /// Adds a frame to the batch, which a [`flush`](Self::flush) writes
    /// out: the queue's items are handled without waiting, and the batch
    /// is flushed when the queue is empty or the batch full.
    fn write(&mut self, frame: Frame<'_>) {
        self.out.push_frame(frame);
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        match tokio::time::timeout(self.write_timeout, self.out.flush_frames()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Stop::Socket(e.to_string())),
            Err(_) => Err(self.stalled()),
        }
    }

    /// The client stopped reading: the session ends (it resyncs on
    /// reconnect) rather than buffering for it without bound.
    fn stalled(&self) -> Stop {
        self.stats.slow_disconnects.add(1);
        tracing::debug!(user_id = self.user, "client stopped reading; closing its session");
        Stop::Socket("write timed out".into())
    }

    async fn close(&mut self, code: u16, reason: &str) -> Result<(), Stop> {
        self.write(Frame::close(code, reason.as_bytes()));
        self.flush().await
    }
}
