//! The generator's view of protocol v1: the test kit's client, with every
//! sent message carrying its index and its intended send time, so
//! receivers check order and measure latency on their own.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tern_testkit::client;
use tokio_tungstenite::tungstenite::Message;

pub use client::{
    ACK, ACK_POLICY, ERROR, GROUP, HEARTBEAT, NEWS, Rx, SINGLE, Tx, Ws, ack, connect,
    connect_split, handshake, heartbeat, now_us,
};

/// What a benchmark message carries as `content`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Payload {
    /// Index of the message in its sender's stream, from 0.
    pub i: u64,
    /// Intended send time, [`now_us`].
    pub t: u64,
}

/// A server frame, its content read as a [`Payload`].
pub type Frame = client::Frame<Payload>;

/// A receiving session (acks what it shows, reconnects after 1013).
pub type Session = client::Session<Payload>;

/// A 1:1 send frame.
pub fn single(to: u64, id: &str, payload: Payload) -> Message {
    client::single(to, id, &payload)
}

/// A group send frame.
pub fn group(group: u64, id: &str, payload: Payload) -> Message {
    client::group(group, id, &payload)
}

/// The next frame; `None` when the connection ended without a close frame
/// or `wait` passed, an error when the server closed the session.
pub async fn next_frame(rx: &mut Rx, wait: Duration) -> anyhow::Result<Option<Frame>> {
    client::next_frame(rx, wait).await
}
