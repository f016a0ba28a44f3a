//! After a message is stored: find who should get it, find the nodes that
//! hold them, publish one event per node.
//!
//! One routing task per message service takes stored messages in commit
//! order (see [`crate::store::Committed`]) and routes whatever has queued
//! up in one pass: one presence lookup for all their recipients, then one
//! event per node carrying that node's messages in order. Pushes therefore
//! reach a gateway in seq order, and a session that is up to date writes
//! each one without reading storage.

use crate::{Peers, store::Committed};
use quick_cache::{OptionsBuilder, Weighter, sync::Cache};
use std::{collections::HashMap, sync::Arc};
use tern_bus::{BusEvent, Deliver, Deliveries, Event};
use tern_proto::{
    conversation,
    pb::{group::GetGroupRequest, message::message::Target},
};
use tokio::sync::mpsc;

/// Most stored messages routed in one pass.
const MAX_PASS: usize = 512;

/// Member ids the cached member lists hold in all (8 bytes each: 32 MiB).
/// A list that falls out is read again from the group service when next
/// needed. Few shards, so that one shard (an eighth of this) still holds
/// the largest group.
const MEMBER_IDS: u64 = 4_000_000;
const MEMBER_SHARDS: usize = 8;

/// A group's member list with the `members_version` it was read at.
type Members = (u64, Arc<Vec<u64>>);

/// Weighs a cached member list by its length.
#[derive(Clone)]
struct ByLength;

impl Weighter<u64, Members> for ByLength {
    fn weight(&self, _group: &u64, members: &Members) -> u64 {
        members.1.len() as u64 + 1
    }
}

/// Routes stored messages to gateway nodes.
pub struct Router {
    peers: Peers,
    /// Group member lists with the `members_version` they were read at,
    /// bounded by [`MEMBER_IDS`].
    members: Cache<u64, Members, ByLength>,
}

impl Router {
    pub fn new(peers: Peers) -> Self {
        let options = OptionsBuilder::new()
            .estimated_items_capacity(10_000)
            .weight_capacity(MEMBER_IDS)
            .shards(MEMBER_SHARDS)
            .build()
            .expect("cache options are complete");
        let members =
            Cache::with_options(options, ByLength, Default::default(), Default::default());
        Self { peers, members }
    }

    /// A group's members. The cached list is used when it is known to be
    /// current (`version` matches, as reported by the membership check the
    /// send already made); otherwise the list is read again.
    pub async fn members(
        &self,
        group_id: u64,
        version: Option<u64>,
    ) -> Result<Members, tonic::Status> {
        if let Some(entry) = self.members.get(&group_id)
            && Some(entry.0) == version
        {
            return Ok(entry);
        }
        let group =
            self.peers.group.clone().get_group(GetGroupRequest { group_id }).await?.into_inner();
        let members = Arc::new(group.member_ids);
        self.members.insert(group_id, (group.members_version, members.clone()));
        Ok((group.members_version, members))
    }

    /// Publishes an ephemeral event (a typing indicator, a read marker) to
    /// every node holding one of `recipients`, each event naming only that
    /// node's recipients. Only a presence failure is an error; a failed
    /// publish loses one indicator, which the next one replaces.
    pub async fn notify(
        &self,
        recipients: &[u64],
        event: impl Fn(Vec<u64>) -> Event,
    ) -> Result<(), tonic::Status> {
        let by_node = self.peers.presence.locate(recipients).await.map_err(|error| {
            metrics::counter!("tern_bus_errors_total", "op" => "locate").increment(1);
            tonic::Status::unavailable(format!("presence unavailable: {error}"))
        })?;
        for (node, recipients) in by_node {
            let event = BusEvent { event: Some(event(recipients)) };
            if let Err(error) = self.peers.bus.publish(&node, event).await {
                metrics::counter!("tern_bus_errors_total", "op" => "publish").increment(1);
                tracing::debug!(node, %error, "ephemeral event not published");
            }
        }
        Ok(())
    }

    /// Routes stored messages, a pass at a time, until the store is gone.
    pub async fn run(self: Arc<Self>, mut stored: mpsc::UnboundedReceiver<Committed>) {
        let mut pass = Vec::with_capacity(MAX_PASS);
        while stored.recv_many(&mut pass, MAX_PASS).await > 0 {
            self.route(std::mem::take(&mut pass)).await;
        }
    }

    /// Publishes `pass` to every node holding a recipient. Failures are
    /// logged, not returned: the messages are already stored and
    /// acknowledged, and recipients that miss the push get them by sync.
    async fn route(&self, pass: Vec<Committed>) {
        let mut routed = Vec::with_capacity(pass.len());
        for Committed { message, members_version } in pass {
            // The sender is not among the recipients: their other devices
            // are found below (the gateway skips the device that sent it).
            let sender = message.sender_id;
            let recipients: Vec<u64> = match message.target {
                Some(Target::ToUserId(to)) if sender != 0 => vec![to],
                // An entry from user 0 (a system message, an operator's
                // recall) reaches both users of the pair, whichever it names.
                Some(Target::ToUserId(to)) => match conversation::parse(&message.conversation_id) {
                    Some(conversation::Kind::Direct(a, b)) => {
                        [a, b].into_iter().filter(|&u| u != 0).collect()
                    }
                    _ => vec![to],
                },
                Some(Target::GroupId(group)) => match self.members(group, members_version).await {
                    Ok((_, members)) => members.iter().copied().filter(|&m| m != sender).collect(),
                    Err(error) => {
                        tracing::warn!(group_id = group, %error, "fan-out skipped: members unavailable");
                        continue;
                    }
                },
                None => continue,
            };
            routed.push((message, recipients));
        }
        let mut everyone: Vec<u64> = routed.iter().flat_map(|(_, r)| r.iter().copied()).collect();
        everyone.sort_unstable();
        everyone.dedup();
        let mut senders: Vec<(u64, &str)> = routed
            .iter()
            .filter(|(m, _)| m.sender_id != 0)
            .map(|(m, _)| (m.sender_id, m.sender_device.as_str()))
            .collect();
        senders.sort_unstable();
        senders.dedup();
        let located = match self.peers.presence.locate_with_senders(&everyone, &senders).await {
            Ok(located) => located,
            Err(error) => {
                metrics::counter!("tern_bus_errors_total", "op" => "locate").increment(1);
                tracing::warn!(%error, "fan-out skipped: presence unavailable");
                return;
            }
        };
        // user → the nodes that hold them.
        let mut nodes_of: HashMap<u64, Vec<&str>> = HashMap::with_capacity(everyone.len());
        for (node, users) in &located.by_node {
            for &user in users {
                nodes_of.entry(user).or_default().push(node);
            }
        }
        let mut per_node: HashMap<&str, Vec<Deliver>> = HashMap::new();
        for (message, recipients) in routed {
            let mut here: HashMap<&str, Vec<u64>> = HashMap::new();
            for user in recipients {
                for &node in nodes_of.get(&user).map(Vec::as_slice).unwrap_or_default() {
                    here.entry(node).or_default().push(user);
                }
            }
            let sending = (message.sender_id, message.sender_device.clone());
            for node in located.other_devices.get(&sending).into_iter().flatten() {
                here.entry(node).or_default().push(message.sender_id);
            }
            for (node, recipients) in here {
                let deliver = Deliver { message: Some(message.clone()), recipients };
                per_node.entry(node).or_default().push(deliver);
            }
        }
        for (node, items) in per_node {
            let event = match <[Deliver; 1]>::try_from(items) {
                Ok([one]) => Event::Deliver(one),
                Err(items) => Event::Deliveries(Deliveries { items }),
            };
            if let Err(error) = self.peers.bus.publish(node, BusEvent { event: Some(event) }).await
            {
                metrics::counter!("tern_bus_errors_total", "op" => "publish").increment(1);
                tracing::warn!(node, %error, "publish failed; recipients will sync");
            }
        }
    }
}
