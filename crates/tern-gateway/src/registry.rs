//! The sessions this node holds, and the handler that gives them bus events.

use crate::{Delivery, Outbound, protocol, stats::Stats, tokens::Tokens};
use dashmap::DashMap;
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering::Relaxed},
};
use tern_bus::{BusEvent, Deliver, Event, Handler, Presence};
use tern_proto::clients::AuthClient;
use tern_runtime::grpc::GrpcChannel;
use tokio_util::sync::CancellationToken;

/// A live session as others see it.
#[derive(Clone)]
pub struct SessionHandle {
    /// Unique across nodes, so a kick can name or spare one session.
    pub id: String,
    /// The client's device (empty for the default one): its messages are
    /// not echoed back to it.
    pub device: Arc<str>,
    /// The session's bounded outbound queue.
    pub tx: flume::Sender<Outbound>,
    /// Cancelled to drop the session at once (a kick it cannot queue).
    pub cancel: CancellationToken,
    /// Set when a live message had to be dropped because the queue was
    /// full; the writer then resyncs from storage instead of trusting the
    /// live stream.
    pub needs_resync: Arc<AtomicBool>,
}

impl SessionHandle {
    /// Asks the session to send a type 100 frame and close; if its queue is
    /// full it is dropped at once instead.
    pub fn kick(&self, reason: String) {
        kick(&self.tx, &self.cancel, reason);
    }

    /// Queues a live message; when the queue is full it is dropped and the
    /// session marked for a resync.
    fn offer(&self, item: Outbound, user: u64, stats: &Stats) {
        if let Err(flume::TrySendError::Full(_)) = self.tx.try_send(item)
            && !self.needs_resync.swap(true, Relaxed)
        {
            tracing::debug!(user_id = user, "outbound queue full; session will resync");
            stats.queue_overflows.add(1);
        }
    }
}

/// Asks the session of `tx` to send a type 100 frame and close; if its
/// queue is full it is dropped at once (`cancel`) instead.
pub fn kick(tx: &flume::Sender<Outbound>, cancel: &CancellationToken, reason: String) {
    if tx.try_send(Outbound::Kick(Box::new(reason))).is_err() {
        cancel.cancel();
    }
}

/// User id → the user's sessions on this node, oldest first.
#[derive(Default)]
pub struct Registry {
    sessions: DashMap<u64, Vec<SessionHandle>>,
}

impl Registry {
    /// Registers `session` for `user`.
    pub fn insert(&self, user: u64, session: SessionHandle) {
        self.sessions.entry(user).or_default().push(session);
    }

    /// The ids of `user`'s sessions here other than `except`, oldest first.
    pub fn others(&self, user: u64, except: &str) -> Vec<String> {
        let Some(sessions) = self.sessions.get(&user) else { return Vec::new() };
        sessions.iter().filter(|s| s.id != except).map(|s| s.id.clone()).collect()
    }

    /// Removes `user`'s session `session_id`; how many sessions of the user
    /// are left here, or `None` when it was not registered (any more).
    pub fn remove(&self, user: u64, session_id: &str) -> Option<usize> {
        let mut left = None;
        self.sessions.remove_if_mut(&user, |_, sessions| {
            let before = sessions.len();
            sessions.retain(|s| s.id != session_id);
            if sessions.len() < before {
                left = Some(sessions.len());
            }
            sessions.is_empty()
        });
        left
    }

    /// Whether `user` has a session here.
    pub fn holds(&self, user: u64) -> bool {
        self.sessions.contains_key(&user)
    }

    /// Asks `user`'s sessions here to close: only `session_id` when given,
    /// else all but `keep`.
    pub fn kick(&self, user: u64, session_id: Option<&str>, keep: &str, reason: &str) {
        let Some(sessions) = self.sessions.get(&user) else { return };
        for session in sessions.iter() {
            let chosen = match session_id {
                Some(id) => session.id == id,
                None => session.id != keep,
            };
            if chosen {
                session.kick(reason.to_string());
            }
        }
    }

    /// Every session, for shutdown.
    pub fn all(&self) -> Vec<SessionHandle> {
        self.sessions.iter().flat_map(|s| s.value().clone()).collect()
    }

    /// Queues a live message for each of `user`'s sessions without waiting,
    /// except the device that sent it. When a queue is full (the client
    /// reads slower than messages arrive) the message is dropped and the
    /// session marked for a resync, which reads what it missed from
    /// storage; the queue, and so the node's memory, stays bounded. A client
    /// that stops reading altogether hits the writer's timeout and is
    /// disconnected.
    pub fn offer(&self, user: u64, delivery: &Arc<Delivery>, stats: &Stats) {
        // Borrowed, not cloned: this runs once per recipient of every message.
        let Some(sessions) = self.sessions.get(&user) else { return };
        for session in sessions.iter() {
            if user == delivery.sender_id && *session.device == *delivery.sender_device {
                continue;
            }
            session.offer(Outbound::Deliver(delivery.clone()), user, stats);
        }
    }

    /// Queues an ephemeral frame (a typing indicator, a read marker,
    /// presence news) for each session of `users` if there is room, except
    /// to the session `except` (the one it came from); when a queue is
    /// full it is simply dropped, with no resync.
    pub fn offer_ephemeral(&self, users: Vec<u64>, frame: &str, except: &str) {
        for user in users {
            let Some(sessions) = self.sessions.get(&user) else { continue };
            for session in sessions.iter().filter(|s| s.id != except) {
                let _ = session.tx.try_send(Outbound::text(frame.to_string()));
            }
        }
    }

    /// Every user with a session here.
    pub fn users(&self) -> Vec<u64> {
        self.sessions.iter().map(|s| *s.key()).collect()
    }

    /// Marks every session for a resync (the bus lost events).
    pub fn resync_all(&self) {
        for sessions in self.sessions.iter() {
            for session in sessions.iter() {
                session.needs_resync.store(true, Relaxed);
                let _ = session.tx.try_send(Outbound::Resync);
            }
        }
    }
}

/// Hands this node's bus events to its sessions, on the task that
/// publishes them (in process) or receives them (Redis): it only queues,
/// never waits.
pub fn dispatcher(
    registry: Arc<Registry>,
    stats: Arc<Stats>,
    presence: Arc<dyn Presence>,
    tokens: Arc<Tokens>,
    auth: AuthClient<GrpcChannel>,
    node: String,
) -> Handler {
    Arc::new(move |BusEvent { event }| {
        stats.bus_events.add(1);
        match event {
            Some(Event::Deliver(deliver)) => hand_out(&registry, deliver, &stats),
            Some(Event::Deliveries(deliveries)) => {
                for deliver in deliveries.items {
                    hand_out(&registry, deliver, &stats);
                }
            }
            Some(Event::Kick(kick)) => {
                let only = Some(kick.session_id.as_str()).filter(|id| !id.is_empty());
                registry.kick(kick.user_id, only, &kick.keep_session_id, &kick.reason);
            }
            // A logout, broadcast by the auth service however it was asked:
            // old tokens are refused and the user's sockets here are closed.
            Some(Event::Revoked(revoked)) => {
                tokens.revoked(revoked.user_id, revoked.valid_after_ms);
                registry.kick(revoked.user_id, None, "", "logged out");
            }
            Some(Event::Typing(typing)) => {
                let frame = protocol::typing(typing.from, &typing.conversation_id, typing.group_id);
                registry.offer_ephemeral(typing.recipients, &frame, "");
            }
            Some(Event::Presence(news)) => {
                let frame = protocol::presence(news.user_id, news.online, news.last_seen_ms);
                registry.offer_ephemeral(news.recipients, &frame, "");
            }
            Some(Event::Read(read)) => {
                let frame = protocol::read(read.reader, &read.conversation_id, read.seq);
                registry.offer_ephemeral(read.recipients, &frame, &read.origin_session_id);
            }
            Some(Event::Resync(_)) => {
                // A logout may have been missed with the rest.
                tokens.forget_all();
                let (tokens, auth) = (tokens.clone(), auth.clone());
                tokio::spawn(async move { tokens.learn_revocations(&auth).await });
                registry.resync_all();
                // The bus lost its connection, and the presence store may
                // have lost its data with it (a Redis restart without
                // persistence): record every local session again, or
                // messages for them would not be routed here until their
                // next heartbeat.
                tokio::spawn(reannounce(registry.users(), presence.clone(), node.clone()));
            }
            None => {}
        }
    })
}

/// Encodes a message once and offers the same bytes to each recipient.
fn hand_out(registry: &Registry, deliver: Deliver, stats: &Stats) {
    let Some(message) = deliver.message else { return };
    let delivery = Arc::new(Delivery::new(&message));
    for user in deliver.recipients {
        registry.offer(user, &delivery, stats);
    }
}

async fn reannounce(users: Vec<u64>, presence: Arc<dyn Presence>, node: String) {
    let mut failed = 0usize;
    for user in users {
        if presence.refresh(user, &node).await.is_err() {
            failed += 1;
        }
    }
    if failed > 0 {
        tracing::warn!(failed, "presence not re-recorded after a bus resync; heartbeats will");
    }
}
