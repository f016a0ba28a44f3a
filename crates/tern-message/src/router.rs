//! After a message is stored: find who should get it, find the nodes that
//! hold them, publish one event per node.

use crate::Peers;
use dashmap::DashMap;
use std::sync::Arc;
use tern_bus::{BusEvent, Deliver, Event};
use tern_proto::pb::{
    group::GetGroupRequest,
    message::{Message, message::Target},
};

/// Routes stored messages to gateway nodes.
pub struct Router {
    peers: Peers,
    /// Group member lists with the `members_version` they were read at.
    members: DashMap<u64, (u64, Arc<Vec<u64>>)>,
}

impl Router {
    pub fn new(peers: Peers) -> Self {
        Self { peers, members: DashMap::new() }
    }

    /// A group's members. The cached list is used when it is known to be
    /// current (`version` matches, as reported by the membership check the
    /// send already made); otherwise the list is read again.
    pub async fn members(
        &self,
        group_id: u64,
        version: Option<u64>,
    ) -> Result<(u64, Arc<Vec<u64>>), tonic::Status> {
        if let Some(entry) = self.members.get(&group_id)
            && Some(entry.0) == version
        {
            return Ok(entry.clone());
        }
        let group =
            self.peers.group.clone().get_group(GetGroupRequest { group_id }).await?.into_inner();
        let members = Arc::new(group.member_ids);
        self.members.insert(group_id, (group.members_version, members.clone()));
        Ok((group.members_version, members))
    }

    /// Publishes `message` to every node holding a recipient. Failures are
    /// logged, not returned: the message is already stored and acknowledged,
    /// and recipients that miss the push get it by sync.
    pub async fn route(&self, message: Message, members_version: Option<u64>) {
        let recipients: Vec<u64> = match message.target {
            Some(Target::ToUserId(to)) => vec![to],
            Some(Target::GroupId(group)) => match self.members(group, members_version).await {
                Ok(members) => {
                    members.1.iter().copied().filter(|&m| m != message.sender_id).collect()
                }
                Err(error) => {
                    tracing::warn!(group_id = group, %error, "fan-out skipped: members unavailable");
                    return;
                }
            },
            None => return,
        };
        let by_node = match self.peers.presence.locate(&recipients).await {
            Ok(by_node) => by_node,
            Err(error) => {
                metrics::counter!("tern_bus_errors_total", "op" => "locate").increment(1);
                tracing::warn!(%error, "fan-out skipped: presence unavailable");
                return;
            }
        };
        for (node, users) in by_node {
            let event = BusEvent {
                event: Some(Event::Deliver(Deliver {
                    message: Some(message.clone()),
                    recipients: users,
                })),
            };
            if let Err(error) = self.peers.bus.publish(&node, event).await {
                metrics::counter!("tern_bus_errors_total", "op" => "publish").increment(1);
                tracing::warn!(node, %error, "publish failed; recipients will sync");
            }
        }
    }
}
