//! The node's counters: each is bumped once, and shows both at `/stats`
//! and at `/metrics`.

use serde::Serialize;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// A count shown at `/stats` and exported as the Prometheus counter it is
/// made with. The handle is looked up once, so bumping it on the hot path
/// costs two atomic adds.
pub struct Count {
    value: AtomicU64,
    metric: metrics::Counter,
}

impl Count {
    fn new(metric: metrics::Counter) -> Self {
        Self { value: AtomicU64::new(0), metric }
    }

    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Relaxed);
        self.metric.increment(n);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Relaxed)
    }
}

/// A level (open connections) shown at `/stats` and exported as a gauge.
pub struct Level {
    value: AtomicI64,
    metric: metrics::Gauge,
}

impl Level {
    pub fn up(&self) {
        self.value.fetch_add(1, Relaxed);
        self.metric.increment(1.0);
    }

    pub fn down(&self) {
        self.value.fetch_sub(1, Relaxed);
        self.metric.decrement(1.0);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Relaxed).max(0) as u64
    }
}

/// Live figures of one gateway node. Made after the process installed its
/// metrics recorder (the handles belong to it).
pub struct Stats {
    pub connections: Level,
    pub connections_total: Count,
    pub messages_in: Count,
    pub messages_out: Count,
    pub queue_overflows: Count,
    pub bus_events: Count,
    pub slow_disconnects: Count,
    pub sends_shed: Count,
    /// Store to socket: how long after its ack a message reaches a client.
    pub ack_deliver_seconds: metrics::Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            connections: Level {
                value: AtomicI64::new(0),
                metric: metrics::gauge!("tern_gateway_connections"),
            },
            connections_total: Count::new(metrics::counter!("tern_gateway_connections_total")),
            messages_in: Count::new(metrics::counter!("tern_gateway_messages_in_total")),
            messages_out: Count::new(metrics::counter!("tern_gateway_messages_out_total")),
            queue_overflows: Count::new(metrics::counter!("tern_gateway_queue_overflows_total")),
            bus_events: Count::new(metrics::counter!("tern_gateway_bus_events_total")),
            slow_disconnects: Count::new(metrics::counter!("tern_gateway_slow_disconnects_total")),
            sends_shed: Count::new(metrics::counter!("tern_gateway_sends_shed_total")),
            ack_deliver_seconds: metrics::histogram!("tern_gateway_ack_deliver_seconds"),
        }
    }
}

/// The `/stats` body.
#[derive(Serialize, utoipa::ToSchema)]
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
            connections: self.connections.get(),
            connections_total: self.connections_total.get(),
            messages_in: self.messages_in.get(),
            messages_out: self.messages_out.get(),
            queue_overflows: self.queue_overflows.get(),
            bus_events: self.bus_events.get(),
            slow_disconnects: self.slow_disconnects.get(),
            sends_shed: self.sends_shed.get(),
        }
    }
}
