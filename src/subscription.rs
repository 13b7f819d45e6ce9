//! [`Subscription`]: a stream of the messages published on one channel.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use futures::Stream;
use tokio::sync::mpsc;

use crate::{command::Command, host::Host, message::ChannelMessage};

/// One subscription to a channel, from [`Host::subscribe`], or one member
/// of a queue group, from [`Host::subscribe_queue`].
///
/// A bounded stream: if the reader falls `subscription_capacity` messages
/// behind, further messages are not queued for it and
/// [`Subscription::missed`] counts them. Dropping the subscription ends it.
#[derive(Debug)]
pub struct Subscription {
    host: Host,
    channel: String,
    group: Option<String>,
    id: u64,
    rx: mpsc::Receiver<ChannelMessage>,
    missed: Arc<AtomicU64>,
}

impl Subscription {
    pub(crate) fn new(
        host: Host,
        (channel, group): (String, Option<String>),
        id: u64,
        rx: mpsc::Receiver<ChannelMessage>,
        missed: Arc<AtomicU64>,
    ) -> Self {
        Subscription {
            host,
            channel,
            group,
            id,
            rx,
            missed,
        }
    }

    /// The channel (or pattern).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The queue group, for a member of one.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// Receives the next message; `None` once the subscription has ended
    /// (unsubscribed or host closed). Cancel-safe.
    pub async fn recv(&mut self) -> Option<ChannelMessage> {
        self.rx.recv().await
    }

    /// Receives up to `limit` messages that are already queued (waiting
    /// for the first if none is), appends them to `buffer` and returns how
    /// many: one wake-up and one queue access for a run of messages, where
    /// [`recv`](Self::recv) takes one each. 0 once the subscription has ended
    /// (or if `limit` is 0). Cancel-safe.
    pub async fn recv_many(&mut self, buffer: &mut Vec<ChannelMessage>, limit: usize) -> usize {
        self.rx.recv_many(buffer, limit).await
    }

    /// Messages this subscription missed because its reader was too slow.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }
}

impl Stream for Subscription {
    type Item = ChannelMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ChannelMessage>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Best effort: if the queue is full the loop prunes the closed sink
        // at the next message on the channel.
        let _ = self.host.inner.commands.try_send(Command::Unsubscribe {
            channel: std::mem::take(&mut self.channel),
            group: self.group.take(),
            id: Some(self.id),
        });
    }
}
