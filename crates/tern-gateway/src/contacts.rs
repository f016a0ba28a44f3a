//! Presence news and presence lookups. A user's 1:1 contacts who are online
//! are told when the user comes online (their first session anywhere) or
//! goes offline (their last one ended); anyone who shares a conversation
//! with the user may ask (`GET /api/presence`). Group members are not told
//! of each other: in a large group that is a frame per member per member at
//! every connect and disconnect.

use crate::AppState;
use tern_bus::{BusEvent, Event, PresenceChanged};
use tern_proto::pb::auth::RecordPresenceRequest;
use tern_runtime::clock::now_ms;

/// Reports that `user` came online or went offline to the auth service,
/// which turns it into a `user.online` or `user.offline` webhook event,
/// when the gateway is set to (`presence_events`). A failure loses the
/// event (logged).
pub async fn report(state: &AppState, user: u64, online: bool) {
    if !state.settings.presence_events {
        return;
    }
    let request = RecordPresenceRequest {
        user_id: user,
        online,
        node_id: state.settings.node_id.clone(),
        at_ms: now_ms(),
    };
    if let Err(status) = state.services.auth.clone().record_presence(request).await {
        tracing::warn!(user_id = user, %status, "presence event not recorded");
    }
}

/// Tells `contacts` who are online, one event per node holding any, that
/// `user` came online or went offline. Failures lose the news (logged), which
/// the contacts' next lookup repairs.
pub async fn announce(state: &AppState, user: u64, contacts: Vec<u64>, online: bool) {
    if contacts.is_empty() {
        return;
    }
    let services = &state.services;
    let by_node = match services.presence.locate(&contacts).await {
        Ok(by_node) => by_node,
        Err(error) => {
            tracing::debug!(user_id = user, %error, "presence news not sent");
            return;
        }
    };
    let last_seen_ms = if online { 0 } else { now_ms() };
    for (node, recipients) in by_node {
        let news = PresenceChanged { user_id: user, online, last_seen_ms, recipients };
        let event = BusEvent { event: Some(Event::Presence(news)) };
        if let Err(error) = services.bus.publish(&node, event).await {
            tracing::debug!(node, %error, "presence news not published");
        }
    }
}

/// Whether `user` still has a session on any node.
pub async fn still_online(state: &AppState, user: u64) -> bool {
    if state.registry.holds(user) {
        return true;
    }
    // When presence cannot be read, say nothing rather than "offline".
    state.services.presence.locate(&[user]).await.map_or(true, |nodes| !nodes.is_empty())
}
