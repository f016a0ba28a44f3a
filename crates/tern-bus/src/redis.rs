//! The distributed adapters, on Redis.
//!
//! - Presence: a hash `online:{user_id}` mapping node id → expiry (Unix ms),
//!   refreshed by heartbeats; the key itself expires too. Each node also
//!   keeps `node:{node_id}:alive` fresh while it runs, so a node that died
//!   (SIGKILL, lost host) stops receiving routes within seconds instead of
//!   when its users' entries expire. A sorted set `sessions:{user_id}`
//!   lists the user's sessions as `{node_id} {session_id} {device}`, scored
//!   by when each connected, for the session limit and to route a user's
//!   own messages only to nodes holding their other devices; entries of
//!   nodes no longer in the hash are stale and ignored.
//! - Bus: Pub/Sub channel `im:node:{node_id}` carrying protobuf `BusEvent`s.
//!   Subscriptions reconnect on their own and report a `Resync` after a gap.

use crate::{
    Bus, BusError, BusEvent, Event, Handler, Located, NodeId, Presence, SessionAt, Subscription,
};
use futures::StreamExt;
use prost::Message;
use redis::{AsyncCommands, aio::ConnectionManager};
use std::{collections::HashMap, time::Duration};
use tern_proto::pb::bus::Resync;
use tern_runtime::clock::now_ms;

/// How long a presence entry lives without a heartbeat. Clients beat every
/// 30 s and are dropped after 90 s of silence; entries outlive that a bit.
const PRESENCE_TTL: Duration = Duration::from_secs(120);
/// How long a node counts as alive without renewing its key.
const NODE_TTL: Duration = Duration::from_secs(15);

fn err(e: redis::RedisError) -> BusError {
    BusError(e.to_string())
}

/// The next reply of a pipeline, as `T`.
fn take<T: redis::FromRedisValue>(
    replies: &mut impl Iterator<Item = redis::Value>,
) -> Result<T, BusError> {
    let reply = replies.next().unwrap_or(redis::Value::Nil);
    T::from_redis_value(reply).map_err(|e| BusError(format!("unexpected reply: {e}")))
}

/// A session's entry in `sessions:{user}`.
fn member(node: &str, session: &str, device: &str) -> String {
    format!("{node} {session} {device}")
}

/// (node, session, device) of an entry; entries written before devices
/// were kept name no device, which is the default one.
fn parse_member(entry: &str) -> Option<(&str, &str, &str)> {
    let mut parts = entry.splitn(3, ' ');
    Some((parts.next()?, parts.next()?, parts.next().unwrap_or("")))
}

/// Every key and channel name starts with a prefix (empty by default), so
/// several deployments can share one Redis.
#[derive(Clone, Debug, Default)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    fn presence(&self, user: u64) -> String {
        format!("{}online:{user}", self.prefix)
    }

    fn last_seen(&self, user: u64) -> String {
        format!("{}seen:{user}", self.prefix)
    }

    fn sessions(&self, user: u64) -> String {
        format!("{}sessions:{user}", self.prefix)
    }

    fn alive(&self, node: &str) -> String {
        format!("{}node:{node}:alive", self.prefix)
    }

    /// The Pub/Sub channel of a node.
    pub fn channel(&self, node: &str) -> String {
        format!("{}im:node:{node}", self.prefix)
    }

    /// The Pub/Sub channel every node listens to.
    pub fn broadcast(&self) -> String {
        format!("{}im:all", self.prefix)
    }
}

/// Opens a self-healing connection to `url`.
pub async fn connect(url: &str) -> Result<(redis::Client, ConnectionManager), BusError> {
    let client = redis::Client::open(url).map_err(err)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    let manager = client.get_connection_manager_with_config(config).await.map_err(err)?;
    Ok((client, manager))
}

/// Presence in Redis.
#[derive(Clone)]
pub struct RedisPresence {
    conn: ConnectionManager,
    names: Names,
}

impl RedisPresence {
    pub fn new(conn: ConnectionManager, names: Names) -> Self {
        Self { conn, names }
    }

    /// Records `user` at `node` (and `session`, when connecting); returns
    /// the presence hash and the user's sessions, oldest first.
    async fn mark(
        &self,
        user: u64,
        node: &str,
        session: Option<(&str, &str)>,
    ) -> Result<(HashMap<String, i64>, Vec<String>), BusError> {
        let mut pipe = self.renewal(user, node, session);
        pipe.hgetall(self.names.presence(user)).zrange(self.names.sessions(user), 0, -1);
        pipe.query_async(&mut self.conn.clone()).await.map_err(err)
    }

    /// The writes that record `user` at `node` (and `session`) for another
    /// [`PRESENCE_TTL`]; every reply ignored.
    fn renewal(&self, user: u64, node: &str, session: Option<(&str, &str)>) -> redis::Pipeline {
        let (key, sessions) = (self.names.presence(user), self.names.sessions(user));
        let now = now_ms();
        let ttl = PRESENCE_TTL.as_millis() as i64;
        let mut pipe = redis::pipe();
        // "Last seen" moves with every heartbeat, so a node that dies
        // without clearing its users leaves them last seen at their last
        // heartbeat, not at their last connect.
        pipe.hset(&key, node, now + ttl)
            .ignore()
            .pexpire(&key, ttl)
            .ignore()
            .set(self.names.last_seen(user), now)
            .ignore();
        if let Some((session, device)) = session {
            pipe.zadd(&sessions, member(node, session, device), now).ignore();
        }
        pipe.pexpire(&sessions, ttl).ignore();
        pipe
    }
}

#[async_trait::async_trait]
impl Presence for RedisPresence {
    async fn connect(
        &self,
        user: u64,
        node: &str,
        session: &str,
        device: &str,
    ) -> Result<Vec<SessionAt>, BusError> {
        let now = now_ms();
        let (nodes, sessions) = self.mark(user, node, Some((session, device))).await?;
        // A session counts while its node holds the user; the entries a
        // dead node left behind are dropped as they are met.
        let (mut live, mut stale) = (Vec::new(), Vec::new());
        for entry in sessions {
            let Some((at, id, _)) = parse_member(&entry) else { continue };
            if nodes.get(at).is_some_and(|&expiry| expiry > now) {
                if id != session {
                    live.push(SessionAt { node: at.to_string(), session: id.to_string() });
                }
            } else {
                stale.push(entry);
            }
        }
        if !stale.is_empty() {
            let _: Result<(), _> = self.conn.clone().zrem(self.names.sessions(user), stale).await;
        }
        Ok(live)
    }

    async fn refresh(&self, user: u64, node: &str) -> Result<(), BusError> {
        // A heartbeat's renewal: nothing read back.
        let pipe = self.renewal(user, node, None);
        pipe.query_async::<()>(&mut self.conn.clone()).await.map_err(err)
    }

    async fn disconnect(
        &self,
        user: u64,
        node: &str,
        session: &str,
        device: &str,
        last_here: bool,
    ) -> Result<(), BusError> {
        let mut pipe = redis::pipe();
        pipe.zrem(self.names.sessions(user), member(node, session, device)).ignore();
        if last_here {
            pipe.hdel(self.names.presence(user), node).ignore();
        }
        pipe.set(self.names.last_seen(user), now_ms()).ignore();
        let _: () = pipe.query_async(&mut self.conn.clone()).await.map_err(err)?;
        Ok(())
    }

    async fn last_seen(&self, users: &[u64]) -> Result<HashMap<u64, i64>, BusError> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        let keys: Vec<String> = users.iter().map(|&u| self.names.last_seen(u)).collect();
        let seen: Vec<Option<i64>> = self.conn.clone().mget(&keys).await.map_err(err)?;
        Ok(users.iter().zip(seen).filter_map(|(&u, s)| Some((u, s?))).collect())
    }

    async fn locate(&self, users: &[u64]) -> Result<HashMap<NodeId, Vec<u64>>, BusError> {
        Ok(self.locate_with_senders(users, &[]).await?.by_node)
    }

    async fn locate_with_senders(
        &self,
        users: &[u64],
        senders: &[(u64, &str)],
    ) -> Result<Located, BusError> {
        let now = now_ms();
        let mut conn = self.conn.clone();
        let mut located = Located::default();
        // The senders' presence hashes and sessions ride in the first
        // pipeline, with the first chunk of users.
        let chunks: Vec<&[u64]> = match users.is_empty() {
            true => vec![&[]],
            false => users.chunks(1_000).collect(),
        };
        for (i, chunk) in chunks.into_iter().enumerate() {
            let senders = if i == 0 { senders } else { &[] };
            if chunk.is_empty() && senders.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for &user in chunk {
                pipe.hgetall(self.names.presence(user));
            }
            for &(user, _) in senders {
                pipe.hgetall(self.names.presence(user)).zrange(self.names.sessions(user), 0, -1);
            }
            let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await.map_err(err)?;
            let mut replies = replies.into_iter();
            for &user in chunk {
                let nodes: HashMap<String, i64> = take(&mut replies)?;
                for (node, expiry) in nodes {
                    if expiry > now {
                        located.by_node.entry(node).or_default().push(user);
                    }
                }
            }
            for &(user, device) in senders {
                let nodes: HashMap<String, i64> = take(&mut replies)?;
                let sessions: Vec<String> = take(&mut replies)?;
                let mut others: Vec<NodeId> = sessions
                    .iter()
                    .filter_map(|entry| parse_member(entry))
                    .filter(|(at, _, on)| {
                        *on != device && nodes.get(*at).is_some_and(|&expiry| expiry > now)
                    })
                    .map(|(at, _, _)| at.to_string())
                    .collect();
                others.sort_unstable();
                others.dedup();
                if !others.is_empty() {
                    located.other_devices.insert((user, device.to_string()), others);
                }
            }
        }
        // Leave out nodes that stopped renewing their liveness key.
        let mut nodes: Vec<NodeId> = located.by_node.keys().cloned().collect();
        nodes.extend(located.other_devices.values().flatten().cloned());
        nodes.sort_unstable();
        nodes.dedup();
        if nodes.is_empty() {
            return Ok(located);
        }
        let keys: Vec<String> = nodes.iter().map(|n| self.names.alive(n)).collect();
        let alive: Vec<Option<String>> = conn.mget(&keys).await.map_err(err)?;
        for (node, alive) in nodes.into_iter().zip(alive) {
            if alive.is_none() {
                located.by_node.remove(&node);
                for others in located.other_devices.values_mut() {
                    others.retain(|n| *n != node);
                }
            }
        }
        located.other_devices.retain(|_, others| !others.is_empty());
        Ok(located)
    }

    async fn keep_node_alive(&self, node: &str) -> Result<(), BusError> {
        let _: () = self
            .conn
            .clone()
            .pset_ex(self.names.alive(node), "1", NODE_TTL.as_millis() as u64)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), BusError> {
        let _: String =
            redis::cmd("PING").query_async(&mut self.conn.clone()).await.map_err(err)?;
        Ok(())
    }

    async fn node_gone(&self, node: &str) -> Result<(), BusError> {
        let _: () = self.conn.clone().del(self.names.alive(node)).await.map_err(err)?;
        Ok(())
    }
}

/// The bus over Redis Pub/Sub.
#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    conn: ConnectionManager,
    names: Names,
}

impl RedisBus {
    pub fn new(client: redis::Client, conn: ConnectionManager, names: Names) -> Self {
        Self { client, conn, names }
    }
}

#[async_trait::async_trait]
impl Bus for RedisBus {
    async fn publish(&self, node: &str, event: BusEvent) -> Result<(), BusError> {
        let _: i64 = self
            .conn
            .clone()
            .publish(self.names.channel(node), event.encode_to_vec())
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn broadcast(&self, event: BusEvent) -> Result<(), BusError> {
        let _: i64 = self
            .conn
            .clone()
            .publish(self.names.broadcast(), event.encode_to_vec())
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn subscribe(&self, node: &str, handler: Handler) -> Result<Subscription, BusError> {
        let client = self.client.clone();
        let channels = [self.names.channel(node), self.names.broadcast()];
        // The first subscription must work, so a misconfigured node fails
        // at start; later losses are retried until the subscription is
        // dropped.
        let first = open(&client, &channels).await?;
        let listening = tokio::spawn(listen(client, channels, first, handler));
        Ok(Subscription::new(move || listening.abort()))
    }
}

async fn open(client: &redis::Client, channels: &[String]) -> Result<redis::aio::PubSub, BusError> {
    let mut pubsub = client.get_async_pubsub().await.map_err(err)?;
    pubsub.subscribe(channels).await.map_err(err)?;
    Ok(pubsub)
}

/// Hands a channel's events to `handler`, resubscribing after every loss
/// of the connection.
async fn listen(
    client: redis::Client,
    channels: [String; 2],
    mut pubsub: redis::aio::PubSub,
    handler: Handler,
) {
    loop {
        {
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let payload: Vec<u8> = match msg.get_payload() {
                    Ok(p) => p,
                    Err(_) => continue,
                };
                match BusEvent::decode(payload.as_slice()) {
                    Ok(event) => handler(event),
                    Err(error) => tracing::warn!(%error, "undecodable bus event dropped"),
                }
            }
        }
        let channel = &channels[0];
        tracing::warn!(channel, "bus subscription lost; resubscribing");
        let mut delay = Duration::from_millis(100);
        pubsub = loop {
            match open(&client, &channels).await {
                Ok(p) => break p,
                Err(error) => {
                    tracing::warn!(%error, "resubscribe failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        tracing::info!(channel, "bus subscription restored; sessions resync");
        handler(BusEvent { event: Some(Event::Resync(Resync {})) });
    }
}
