//! The write buffer under a socket's WebSocket writer. Frames written
//! between two flushes go out in one system call, and the buffer holds
//! memory only while a batch is being written: an idle session has none.
//!
//! `tokio::io::BufWriter` would batch the same way but keeps its full
//! capacity (8 KiB by default) allocated for the socket's whole life,
//! which was the largest single part of what an idle connection cost.

use fastwebsockets::Frame;
use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};
use tokio::io::AsyncWrite;

/// A batch that grows past this is written out before it takes more, so
/// one burst of frames never buffers without bound.
const MAX_BATCH: usize = 64 * 1024;

/// The longest head of a frame: two bytes, a 64-bit length and a mask.
const MAX_HEAD: usize = 14;

pub struct BatchWriter<W> {
    inner: W,
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken.
    written: usize,
}

impl<W: AsyncWrite + Unpin> BatchWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, buf: Vec::new(), written: 0 }
    }

    /// Writes out what is buffered, keeping the allocation for more.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Adds a server frame (unmasked) to the batch. Nothing is written
    /// until [`flush`](Self::flush_frames), so adding never waits; a batch
    /// that is [`full`](Self::full) should be flushed before it takes more.
    pub fn push_frame(&mut self, mut frame: Frame<'_>) {
        let mut head = [0u8; MAX_HEAD];
        let size = frame.fmt_head(&mut head);
        self.buf.reserve(size + frame.payload.len());
        self.buf.extend_from_slice(&head[..size]);
        self.buf.extend_from_slice(&frame.payload);
    }

    /// Whether the batch has grown past [`MAX_BATCH`].
    pub fn full(&self) -> bool {
        self.buf.len() > MAX_BATCH
    }

    /// Writes the batch out and gives its memory back.
    pub async fn flush_frames(&mut self) -> io::Result<()> {
        tokio::io::AsyncWriteExt::flush(self).await
    }

    /// Makes room for `incoming` more bytes, writing the batch out first
    /// if it would grow past [`MAX_BATCH`].
    fn poll_room(&mut self, cx: &mut Context<'_>, incoming: usize) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() && self.buf.len() + incoming > MAX_BATCH {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for BatchWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_room(cx, data.len()))?;
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total = bufs.iter().map(|b| b.len()).sum();
        ready!(this.poll_room(cx, total))?;
        this.buf.reserve(total);
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        // The batch is out: give its memory back.
        this.buf = Vec::new();
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_nothing_before_a_flush_then_everything_in_order() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut writer = BatchWriter::new(client);
        writer.write_all(b"one ").await.unwrap();
        let parts = [io::IoSlice::new(b"two "), io::IoSlice::new(b"three")];
        let n = writer.write_vectored(&parts).await.unwrap();
        assert_eq!(n, 9);
        let mut probe = [0u8; 1];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(50), server.read(&mut probe))
                .await;
        assert!(early.is_err(), "nothing reaches the socket before a flush");
        writer.flush().await.unwrap();
        assert_eq!(writer.buf.capacity(), 0, "a flushed writer holds no buffer");
        let mut got = vec![0u8; 13];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two three");
    }

    #[tokio::test]
    async fn frames_go_out_with_their_heads_on_a_flush() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut writer = BatchWriter::new(client);
        writer.push_frame(Frame::text(fastwebsockets::Payload::Borrowed(b"hi")));
        let long = vec![b'x'; 300];
        writer.push_frame(Frame::binary(fastwebsockets::Payload::Borrowed(&long)));
        writer.push_frame(Frame::close(1000, b""));
        assert!(!writer.full());
        writer.flush_frames().await.unwrap();
        let mut got = vec![0u8; 4 + 4 + 300 + 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..4], &[0x81, 2, b'h', b'i'], "a final text frame, unmasked");
        assert_eq!(&got[4..8], &[0x82, 126, 1, 44], "a 16-bit length for 300 bytes");
        assert_eq!(&got[8..308], &long[..]);
        assert_eq!(&got[308..], &[0x88, 2, 0x03, 0xe8], "a close frame with code 1000");
    }

    #[tokio::test]
    async fn a_batch_past_the_bound_is_written_out_before_it_grows() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut writer = BatchWriter::new(client);
        let chunk = vec![7u8; MAX_BATCH / 2 + 1];
        writer.write_all(&chunk).await.unwrap();
        writer.write_all(&chunk).await.unwrap();
        assert_eq!(writer.buf.len(), chunk.len(), "the first chunk went out");
        let mut got = vec![0u8; chunk.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, chunk);
    }
}
