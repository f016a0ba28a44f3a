//! The embedded adapters: presence in a map, the bus as channels.

use crate::{Bus, BusError, BusEvent, Handler, Located, NodeId, Presence, SessionAt, Subscription};
use dashmap::DashMap;
use std::{collections::HashMap, sync::Arc};

/// The bus of a single process: publishing calls the node's handler on the
/// publisher's task, so an event reaches the sessions without a hand-off to
/// another task.
#[derive(Default)]
pub struct InProcessBus {
    nodes: Arc<DashMap<NodeId, Handler>>,
}

impl InProcessBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, node: &str, event: BusEvent) -> Result<(), BusError> {
        // Cloned out, so the handler runs without holding the map's lock.
        if let Some(handler) = self.nodes.get(node).map(|h| h.clone()) {
            handler(event);
        }
        Ok(())
    }

    async fn broadcast(&self, event: BusEvent) -> Result<(), BusError> {
        let handlers: Vec<Handler> = self.nodes.iter().map(|h| h.value().clone()).collect();
        for handler in handlers {
            handler(event.clone());
        }
        Ok(())
    }

    async fn subscribe(&self, node: &str, handler: Handler) -> Result<Subscription, BusError> {
        self.nodes.insert(node.to_string(), handler.clone());
        let (nodes, node) = (self.nodes.clone(), node.to_string());
        Ok(Subscription::new(move || {
            nodes.remove_if(&node, |_, h| Arc::ptr_eq(h, &handler));
        }))
    }
}

/// Presence of a single process.
#[derive(Default)]
pub struct InProcessPresence {
    /// Each online user's sessions, oldest first, with their devices.
    users: DashMap<u64, Vec<(SessionAt, String)>>,
    /// When each user was last online; kept only as long as the process.
    last_seen: DashMap<u64, i64>,
}

impl InProcessPresence {
    /// Nobody online.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl Presence for InProcessPresence {
    async fn connect(
        &self,
        user: u64,
        node: &str,
        session: &str,
        device: &str,
    ) -> Result<Vec<SessionAt>, BusError> {
        self.last_seen.insert(user, tern_runtime::clock::now_ms());
        let mut sessions = self.users.entry(user).or_default();
        let others = sessions.iter().map(|(at, _)| at.clone()).collect();
        let at = SessionAt { node: node.to_string(), session: session.to_string() };
        sessions.push((at, device.to_string()));
        Ok(others)
    }

    async fn refresh(&self, _user: u64, _node: &str) -> Result<(), BusError> {
        // Nothing expires in one process: the entry lives exactly as long
        // as the session.
        Ok(())
    }

    async fn disconnect(
        &self,
        user: u64,
        _node: &str,
        session: &str,
        _device: &str,
        _last_here: bool,
    ) -> Result<(), BusError> {
        self.last_seen.insert(user, tern_runtime::clock::now_ms());
        // Exact per session: a node's entry is gone with its last session,
        // whatever order a closing and a new session of the user ran in.
        self.users.remove_if_mut(&user, |_, sessions| {
            sessions.retain(|(at, _)| at.session != session);
            sessions.is_empty()
        });
        Ok(())
    }

    async fn locate(&self, users: &[u64]) -> Result<HashMap<NodeId, Vec<u64>>, BusError> {
        let mut by_node: HashMap<NodeId, Vec<u64>> = HashMap::new();
        for &user in users {
            let Some(sessions) = self.users.get(&user) else { continue };
            for (i, (session, _)) in sessions.iter().enumerate() {
                // Each node once, however many sessions the user has there.
                if sessions[..i].iter().any(|(s, _)| s.node == session.node) {
                    continue;
                }
                match by_node.get_mut(&session.node) {
                    Some(users) => users.push(user),
                    None => {
                        by_node.insert(session.node.clone(), vec![user]);
                    }
                }
            }
        }
        Ok(by_node)
    }

    async fn locate_with_senders(
        &self,
        users: &[u64],
        senders: &[(u64, &str)],
    ) -> Result<Located, BusError> {
        let mut other_devices: HashMap<(u64, String), Vec<NodeId>> = HashMap::new();
        for &(user, device) in senders {
            let Some(sessions) = self.users.get(&user) else { continue };
            let mut nodes: Vec<NodeId> = sessions
                .iter()
                .filter(|(_, d)| d != device)
                .map(|(at, _)| at.node.clone())
                .collect();
            nodes.sort_unstable();
            nodes.dedup();
            if !nodes.is_empty() {
                other_devices.insert((user, device.to_string()), nodes);
            }
        }
        Ok(Located { by_node: self.locate(users).await?, other_devices })
    }

    async fn last_seen(&self, users: &[u64]) -> Result<HashMap<u64, i64>, BusError> {
        Ok(users.iter().filter_map(|u| Some((*u, *self.last_seen.get(u)?))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, Kick};

    #[tokio::test]
    async fn presence_groups_users_by_node() {
        let p = InProcessPresence::new();
        assert!(p.connect(1, "a", "s1", "").await.unwrap().is_empty());
        p.connect(2, "b", "s2", "").await.unwrap();
        let at =
            |node: &str, session: &str| SessionAt { node: node.into(), session: session.into() };
        assert_eq!(p.connect(1, "b", "s3", "phone").await.unwrap(), vec![at("a", "s1")]);
        // A second session on the same node: the node is listed once.
        assert_eq!(
            p.connect(1, "b", "s4", "phone").await.unwrap(),
            vec![at("a", "s1"), at("b", "s3")]
        );
        // User 1 is on the default device and the phone; user 2 only on one.
        let located = p.locate_with_senders(&[], &[(1, ""), (1, "phone"), (2, "")]).await.unwrap();
        assert_eq!(located.other_devices[&(1, "".into())], vec!["b"]);
        assert_eq!(located.other_devices[&(1, "phone".into())], vec!["a"]);
        assert!(!located.other_devices.contains_key(&(2, "".into())), "{located:?}");
        let located = p.locate(&[1, 2, 3]).await.unwrap();
        assert_eq!(located["a"], vec![1]);
        assert_eq!(located["b"], vec![1, 2]);
        p.disconnect(1, "a", "s1", "", true).await.unwrap();
        p.disconnect(1, "b", "s3", "", false).await.unwrap();
        assert_eq!(p.locate(&[1]).await.unwrap()["b"], vec![1]);
        p.disconnect(1, "b", "s4", "", true).await.unwrap();
        let located = p.locate(&[1]).await.unwrap();
        assert!(located.is_empty(), "{located:?}");
    }

    #[tokio::test]
    async fn bus_reaches_only_the_target_node() {
        let bus = InProcessBus::new();
        let (a, mut from_a) = crate::channel_handler();
        let (b, mut from_b) = crate::channel_handler();
        let _a = bus.subscribe("a", a).await.unwrap();
        let subscribed_b = bus.subscribe("b", b).await.unwrap();
        let kick = BusEvent { event: Some(Event::Kick(Kick { user_id: 7, ..Default::default() })) };
        bus.publish("b", kick.clone()).await.unwrap();
        bus.publish("nobody", kick.clone()).await.unwrap();
        assert_eq!(from_b.try_recv().unwrap(), kick);
        assert!(from_a.try_recv().is_err());
        // Dropping the subscription stops the events.
        drop(subscribed_b);
        bus.publish("b", kick.clone()).await.unwrap();
        assert!(from_b.try_recv().is_err());
    }
}
