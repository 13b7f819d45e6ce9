//! A simulated network link for the memory transport: every chunk of bytes
//! read from a connection becomes readable only `delay` after it arrived,
//! and with probability `loss` another 200 ms later (a reliable stream
//! cannot drop bytes; a lost segment shows up as a retransmission delay).
//! Order is kept: a chunk is never released before the one ahead of it.

use std::{
    collections::VecDeque,
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::{AsyncRead, AsyncWrite};
use rand::Rng;
use tokio::time::{Instant, Sleep};

/// Extra delay of a "lost" chunk.
const RETRANSMIT: Duration = Duration::from_millis(200);
/// Most bytes buffered ahead of the reader before the link stops reading.
const MAX_BUFFERED: usize = 4 << 20;

/// A connection whose reads are delayed.
pub(crate) struct DelayedLink<T> {
    inner: T,
    delay: Duration,
    loss: f64,
    queue: VecDeque<(Instant, Vec<u8>, usize)>,
    buffered: usize,
    eof: bool,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> DelayedLink<T> {
    pub(crate) fn new(inner: T, delay: Duration, loss: f64) -> Self {
        DelayedLink {
            inner,
            delay,
            loss,
            queue: VecDeque::new(),
            buffered: 0,
            eof: false,
            timer: None,
        }
    }

    fn release_time(&self) -> Instant {
        let mut at = Instant::now() + self.delay;
        if self.loss > 0.0 && rand::thread_rng().gen_bool(self.loss) {
            at += RETRANSMIT;
        }
        match self.queue.back() {
            Some((last, _, _)) if *last > at => *last,
            _ => at,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DelayedLink<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Take in everything that arrived, stamped with its release time.
        while !this.eof && this.buffered < MAX_BUFFERED {
            let mut chunk = vec![0u8; 64 * 1024];
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(n)) => {
                    chunk.truncate(n);
                    let at = this.release_time();
                    this.buffered += n;
                    this.queue.push_back((at, chunk, 0));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        loop {
            let Some((at, chunk, offset)) = this.queue.front_mut() else {
                return if this.eof {
                    Poll::Ready(Ok(0))
                } else {
                    Poll::Pending
                };
            };
            if *at <= Instant::now() {
                let n = (chunk.len() - *offset).min(buf.len());
                buf[..n].copy_from_slice(&chunk[*offset..*offset + n]);
                *offset += n;
                if *offset == chunk.len() {
                    this.queue.pop_front();
                }
                this.buffered -= n;
                return Poll::Ready(Ok(n));
            }
            let at = *at;
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            timer.as_mut().reset(at);
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DelayedLink<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}
