//! Counters behind `/stats`.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live figures of one gateway node.
#[derive(Default)]
pub struct Stats {
    /// Metric handles bumped per message, looked up once.
    pub per_message: PerMessage,
    pub connections_live: AtomicU64,
    pub connections_total: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub queue_overflows: AtomicU64,
    pub bus_events: AtomicU64,
    pub slow_disconnects: AtomicU64,
    pub sends_shed: AtomicU64,
}

/// Handles of the metrics recorded for every message, so the hot path
/// does not look each up in the registry by name. Made with the node's
/// `Stats`, after the process installed its metrics recorder.
pub struct PerMessage {
    pub messages_in: metrics::Counter,
    pub messages_out: metrics::Counter,
    /// Store to socket: how long after its ack a message reaches a client.
    pub ack_deliver_seconds: metrics::Histogram,
}

impl Default for PerMessage {
    fn default() -> Self {
        Self {
            messages_in: metrics::counter!("tern_gateway_messages_in_total"),
            messages_out: metrics::counter!("tern_gateway_messages_out_total"),
            ack_deliver_seconds: metrics::histogram!("tern_gateway_ack_deliver_seconds"),
        }
    }
}

/// The `/stats` body.
#[derive(Serialize)]
pub struct StatsView {
    pub node_id: String,
    pub connections: u64,
    pub connections_total: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub queue_overflows: u64,
    /// Events received on this node's bus channel.
    pub bus_events: u64,
    /// Sessions closed because the client stopped reading.
    pub slow_disconnects: u64,
    /// Sends refused because too many were in flight.
    pub sends_shed: u64,
}

impl Stats {
    pub fn view(&self, node_id: &str) -> StatsView {
        StatsView {
            node_id: node_id.to_string(),
            connections: self.connections_live.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            messages_in: self.messages_in.load(Relaxed),
            messages_out: self.messages_out.load(Relaxed),
            queue_overflows: self.queue_overflows.load(Relaxed),
            bus_events: self.bus_events.load(Relaxed),
            slow_disconnects: self.slow_disconnects.load(Relaxed),
            sends_shed: self.sends_shed.load(Relaxed),
        }
    }
}
