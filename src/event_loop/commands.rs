//! The handles' commands, each handed to the concern that serves it.

use super::EventLoop;
use crate::command::Command;

impl EventLoop {
    pub(super) fn on_command(&mut self, cmd: Command) {
        if self.closing.is_some() {
            // Every reply channel is dropped, which the handle reads as Closed.
            if let Command::Close { reply } = cmd {
                if let Some(c) = self.closing.as_mut() {
                    c.replies.push(reply);
                }
            }
            return;
        }
        match cmd {
            Command::Listen { addr, reply } => self.listen(addr, reply),
            Command::Join { addr, shown, reply } => self.join(addr, shown, reply),
            Command::Send(p) => self.send(p),
            Command::Find { id, reply } => self.find(id, reply),
            Command::Subscribe {
                channel,
                group: None,
                sink,
                reply,
            } => {
                let _ = reply.send(self.subscribe(channel, sink));
            }
            Command::Subscribe {
                channel,
                group: Some(group),
                sink,
                reply,
            } => {
                let _ = reply.send(self.subscribe_queue(channel, group, sink));
            }
            Command::Unsubscribe {
                channel,
                group: None,
                id,
            } => self.unsubscribe(&channel, id),
            Command::Unsubscribe {
                channel,
                group: Some(group),
                id,
            } => self.unsubscribe_queue(channel, group, id),
            Command::Publish {
                channel,
                payload,
                reply,
            } => self.publish(channel, payload, reply),
            Command::Broadcast {
                from,
                to,
                payload,
                reply,
            } => self.start_broadcast(from, to, payload, reply),
            Command::Members { reply } => {
                let _ = reply.send(self.members_info());
            }
            Command::Readiness { reply } => {
                let _ = reply.send(self.readiness());
            }
            Command::Registration { id, reply } => self.check_registration(id, reply),
            Command::CachedLocation { id, reply } => {
                let _ = reply.send(self.locations.peek(id.as_str()));
            }
            Command::Close { reply } => self.start_close(reply),
        }
    }
}
