//! How a stored message finds the gateway nodes that hold its recipients.
//!
//! Two seams, each with an in-process adapter for the embedded mode (and a
//! Redis adapter for the distributed one):
//!
//! - [`Presence`]: which gateway node(s) hold a user's sessions.
//! - [`Bus`]: one channel per node; a publisher sends one [`BusEvent`] per
//!   target node carrying the message once and that node's recipients.
//!   Events every node needs (a logout) are broadcast on one more channel.
//!
//! Delivery over the bus is best effort by design (docs/protocol.md, *Delivery guarantees*): a lost
//! event is repaired by the client's sync, never by retrying here.
//!
//! **Architecture Invariant:** the bus knows nothing of WebSockets, JSON or
//! storage; it moves protobuf events between nodes.

mod in_process;
mod redis;

use std::{collections::HashMap, sync::Arc};

pub use in_process::{InProcessBus, InProcessPresence};
pub use redis::{Names, RedisBus, RedisPresence, connect as connect_redis};
pub use tern_proto::pb::bus::{
    BusEvent, Deliver, Deliveries, Kick, PresenceChanged, Read, Resync, Revoked, Typing,
    bus_event::Event,
};

/// A gateway node's id, e.g. `gw-1` (or `local` when embedded).
pub type NodeId = String;

/// A bus or presence operation failed (the backing store is unreachable).
#[derive(Debug, thiserror::Error)]
#[error("bus unavailable: {0}")]
pub struct BusError(pub String);

/// Takes a node's events, one at a time in the order they were published.
/// It runs on the publisher's task (in process) or the subscription's task
/// (Redis), so it must hand events on without waiting.
pub type Handler = Arc<dyn Fn(BusEvent) + Send + Sync>;

/// A node's subscription: events reach its [`Handler`] until it is dropped.
pub struct Subscription {
    stop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Subscription {
    fn new(stop: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self { stop: Some(Box::new(stop)) }
    }
}

/// A handler that queues every event on an unbounded channel, for callers
/// that want to await events (tests, tools).
pub fn channel_handler() -> (Handler, tokio::sync::mpsc::UnboundedReceiver<BusEvent>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (Arc::new(move |event| drop(tx.send(event))), rx)
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

/// Moves events to gateway nodes.
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Sends `event` to `node`. Succeeds even when nobody listens (the node
    /// died); the recipients then catch up through sync.
    async fn publish(&self, node: &str, event: BusEvent) -> Result<(), BusError>;

    /// Sends `event` to every node (a logout every node must hear of).
    async fn broadcast(&self, event: BusEvent) -> Result<(), BusError>;

    /// Starts handing `node`'s events, and every broadcast, to `handler`.
    /// A node subscribes once at start.
    async fn subscribe(&self, node: &str, handler: Handler) -> Result<Subscription, BusError>;
}

/// One session of a user, somewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionAt {
    /// The node that holds it.
    pub node: NodeId,
    /// The session's id (unique across nodes).
    pub session: String,
}

/// What [`Presence::locate_with_senders`] found.
#[derive(Debug, Default)]
pub struct Located {
    /// The online users among those asked for, by the node that holds them.
    pub by_node: HashMap<NodeId, Vec<u64>>,
    /// Per sender and sending device, the nodes holding the sender's other
    /// devices (absent: none).
    pub other_devices: HashMap<(u64, String), Vec<NodeId>>,
}

/// Knows which node(s) hold each online user, and which sessions.
#[async_trait::async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records `session` (connected as `device`) of `user` at `node` and
    /// returns the user's other live sessions, on any node, oldest first
    /// (so the caller can enforce a session limit).
    async fn connect(
        &self,
        user: u64,
        node: &str,
        session: &str,
        device: &str,
    ) -> Result<Vec<SessionAt>, BusError>;

    /// Keeps `user` online at `node` (heartbeat).
    async fn refresh(&self, user: u64, node: &str) -> Result<(), BusError>;

    /// Forgets `session` (connected as `device`) of `user`; with
    /// `last_here`, `user` is offline at `node` too (it was their last
    /// session there).
    async fn disconnect(
        &self,
        user: u64,
        node: &str,
        session: &str,
        device: &str,
        last_here: bool,
    ) -> Result<(), BusError>;

    /// Groups the online users among `users` by the node that holds them.
    /// Offline users, and users on nodes that stopped renewing their
    /// liveness, are left out.
    async fn locate(&self, users: &[u64]) -> Result<HashMap<NodeId, Vec<u64>>, BusError>;

    /// [`locate`](Self::locate), and for each `(user, device)` of
    /// `senders` the nodes holding a session of that user on another
    /// device: where a message the user sent from `device` must go so that
    /// their other devices get it. One round trip for both.
    async fn locate_with_senders(
        &self,
        users: &[u64],
        senders: &[(u64, &str)],
    ) -> Result<Located, BusError>;

    /// When each of `users` was last known online (Unix milliseconds):
    /// their last connect, heartbeat or disconnect. Users never seen are
    /// left out.
    async fn last_seen(&self, users: &[u64]) -> Result<HashMap<u64, i64>, BusError>;

    /// Declares `node` alive for a short while; a running node calls this
    /// every few seconds.
    async fn keep_node_alive(&self, _node: &str) -> Result<(), BusError> {
        Ok(())
    }

    /// Checks that the backing store answers (readiness).
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Declares `node` gone at once (clean shutdown).
    async fn node_gone(&self, _node: &str) -> Result<(), BusError> {
        Ok(())
    }
}
