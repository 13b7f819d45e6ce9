//! Bytes on the wire: every connection's raw stream (below noise and
//! yamux, so framing, encryption and pings count) adds what it reads and
//! writes to its host's [`WireStats`]. The operator's view of a host's
//! traffic (`Stats::bytes_sent`, `Stats::bytes_received`), and the
//! simulator's idle bytes per host.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::{AsyncRead, AsyncWrite};

use crate::protocol::WireStats;

/// A connection whose reads and writes are counted.
pub(crate) struct Metered<T> {
    inner: T,
    stats: Arc<WireStats>,
}

impl<T> Metered<T> {
    pub(crate) fn new(inner: T, stats: Arc<WireStats>) -> Self {
        Metered { inner, stats }
    }
}

/// `r`, after adding the bytes it moved with `add`.
fn tally(r: Poll<io::Result<usize>>, add: impl FnOnce(usize)) -> Poll<io::Result<usize>> {
    if let Poll::Ready(Ok(n)) = r {
        add(n);
    }
    r
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        tally(r, |n| self.stats.count_received(n))
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_read_vectored(cx, bufs);
        tally(r, |n| self.stats.count_received(n))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        tally(r, |n| self.stats.count_sent(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        tally(r, |n| self.stats.count_sent(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::{io::Cursor, AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn reads_and_writes_are_counted() {
        let stats = Arc::new(WireStats::default());
        let mut out = Metered::new(Cursor::new(Vec::new()), stats.clone());
        out.write_all(b"hello").await.unwrap();
        let mut inp = Metered::new(Cursor::new(b"hi".to_vec()), stats.clone());
        let mut back = Vec::new();
        inp.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hi");
        assert_eq!((stats.bytes_sent(), stats.bytes_received()), (5, 2));
    }
}
