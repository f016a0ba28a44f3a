//! The frame level of a socket's reading side: control frames, fragment
//! reassembly with a limit on the whole message, UTF-8 of text messages,
//! close handshakes and the idle timeout. Whole messages go to a handler.
//!
//! fastwebsockets checks single frames; what it leaves open is closed here:
//! control frames over 125 bytes, close payloads (length, code, UTF-8
//! reason), and messages whose fragments together exceed the limit.

use crate::{Outbound, protocol::close};
use fastwebsockets::{OpCode, WebSocketError, WebSocketRead};
use std::time::Duration;
use tokio::io::AsyncRead;

/// Largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;

/// Limits of one socket.
pub struct FrameLimits {
    /// Silence after which the socket is closed.
    pub idle: Duration,
    /// Largest whole message, all fragments together.
    pub max_message: usize,
}

/// A whole message: its first frame's opcode (Text or Binary) and payload.
/// Text messages have been checked to be UTF-8.
pub struct Message {
    pub binary: bool,
    pub data: Vec<u8>,
}

/// Reads until the socket ends or `on_message` returns false. Answers
/// pings, completes the close handshake, and asks the writer (through `tx`)
/// to close with the right code on every violation.
///
/// Not an `async fn`, which would copy its arguments into its future once
/// more: this future is what an idle session's reader holds. For the same
/// reason `on_message`'s future should be boxed unless it is small.
#[allow(clippy::manual_async_fn)] // the point: see above
pub fn read_messages<'a, R, F, Fut>(
    mut read: WebSocketRead<R>,
    limits: FrameLimits,
    tx: &'a flume::Sender<Outbound>,
    mut on_message: F,
) -> impl Future<Output = ()> + 'a
where
    R: AsyncRead + Unpin + 'a,
    F: FnMut(Message) -> Fut + 'a,
    Fut: Future<Output = bool> + 'a,
{
    async move {
        let close = |code: u16, reason: &'static str| async move {
            let _ = tx.send_async(Outbound::close(code, reason)).await;
        };
        // Frames of a fragmented message, until its final frame arrives.
        let mut partial: Option<(OpCode, Vec<u8>)> = None;
        let mut obligated =
            |_: fastwebsockets::Frame<'_>| async { Ok::<(), std::convert::Infallible>(()) };
        loop {
            let frame =
                match tokio::time::timeout(limits.idle, read.read_frame(&mut obligated)).await {
                    Err(_) => return close(close::NORMAL, "idle timeout").await,
                    Ok(Err(WebSocketError::FrameTooLarge)) => {
                        return close(close::TOO_BIG, "message too big").await;
                    }
                    Ok(Err(WebSocketError::InvalidUTF8)) => {
                        return close(close::INVALID_DATA, "text frame is not UTF-8").await;
                    }
                    Ok(Err(
                        WebSocketError::ConnectionClosed
                        | WebSocketError::UnexpectedEOF
                        | WebSocketError::IoError(_),
                    )) => return,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "protocol error");
                        return close(close::PROTOCOL_ERROR, "protocol error").await;
                    }
                    Ok(Ok(frame)) => frame,
                };
            let (opcode, fin) = (frame.opcode, frame.fin);
            if matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong)
                && frame.payload.len() > MAX_CONTROL
            {
                return close(close::PROTOCOL_ERROR, "control frame over 125 bytes").await;
            }
            let whole = match opcode {
                OpCode::Text | OpCode::Binary if partial.is_some() => {
                    return close(close::PROTOCOL_ERROR, "expected a continuation frame").await;
                }
                OpCode::Text | OpCode::Binary if fin => Some((opcode, frame.payload.to_vec())),
                OpCode::Text | OpCode::Binary => {
                    partial = Some((opcode, frame.payload.to_vec()));
                    None
                }
                OpCode::Continuation => {
                    let Some((first, mut data)) = partial.take() else {
                        return close(close::PROTOCOL_ERROR, "unexpected continuation frame").await;
                    };
                    if data.len() + frame.payload.len() > limits.max_message {
                        return close(close::TOO_BIG, "message too big").await;
                    }
                    data.extend_from_slice(&frame.payload);
                    if fin {
                        Some((first, data))
                    } else {
                        partial = Some((first, data));
                        None
                    }
                }
                OpCode::Ping => {
                    if tx
                        .send_async(Outbound::Pong(Box::new(frame.payload.to_vec())))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    None
                }
                OpCode::Pong => None,
                OpCode::Close => {
                    let (code, reason) = answer_to_close(&frame.payload);
                    return close(code, reason).await;
                }
            };
            let Some((first, data)) = whole else { continue };
            if data.len() > limits.max_message {
                return close(close::TOO_BIG, "message too big").await;
            }
            let binary = first == OpCode::Binary;
            if !binary && std::str::from_utf8(&data).is_err() {
                return close(close::INVALID_DATA, "text frame is not UTF-8").await;
            }
            if !on_message(Message { binary, data }).await {
                return;
            }
        }
    }
}

/// The close frame to answer a client's close with: its own code when it is
/// a valid one, 1002 for a malformed frame, 1007 for a reason that is not
/// UTF-8 (RFC 6455 §5.5.1, §7.4).
pub(crate) fn answer_to_close(payload: &[u8]) -> (u16, &'static str) {
    match payload {
        [] => (close::NORMAL, ""),
        [_] => (close::PROTOCOL_ERROR, "malformed close frame"),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                (close::PROTOCOL_ERROR, "invalid close code")
            } else if std::str::from_utf8(reason).is_err() {
                (close::INVALID_DATA, "close reason is not UTF-8")
            } else {
                (code, "")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_answers_follow_the_rfc() {
        assert_eq!(answer_to_close(&[]).0, 1000);
        assert_eq!(answer_to_close(&[3]).0, 1002);
        assert_eq!(answer_to_close(&1001u16.to_be_bytes()).0, 1001);
        assert_eq!(answer_to_close(&4999u16.to_be_bytes()).0, 4999);
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            assert_eq!(answer_to_close(&bad.to_be_bytes()).0, 1002, "{bad}");
        }
        let mut invalid_reason = 1000u16.to_be_bytes().to_vec();
        invalid_reason.extend([0xff, 0xfe]);
        assert_eq!(answer_to_close(&invalid_reason).0, 1007);
    }
}
