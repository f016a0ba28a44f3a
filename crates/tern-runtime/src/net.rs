//! Listening sockets.

use tokio::net::{TcpListener, lookup_host};

/// Connections the kernel may hold for a listener before it is accepted
/// (capped by `net.core.somaxconn`). Tokio's `TcpListener::bind` asks for
/// 128: in a reconnect storm of a few hundred clients at once the queue
/// overflowed while the node was busy, the kernel dropped SYNs, and each
/// dropped client waited the 1 s SYN retransmit.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (`host:port`) with [`LISTEN_BACKLOG`] and `SO_REUSEADDR`.
pub async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, format!("{addr}: no address"))
    }))
}
