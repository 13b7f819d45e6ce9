//! Echo peers: answer every message by sending its payload back (a
//! request with a reply, anything else with a message).

use distribus::{Host, Result};
use tokio::task::JoinHandle;

/// Creates peer `id` on `host` and answers each message it receives with
/// the same payload, to the sender. Replies go out one at a time, in order;
/// a failed reply is logged and the next message is served.
pub(crate) fn spawn(host: &Host, id: &str) -> Result<JoinHandle<()>> {
    let peer = host.create(id)?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = peer.recv().await {
            if msg.from == peer.id() {
                continue;
            }
            let answered = if msg.is_request() {
                msg.reply_payload(&peer, msg.payload.clone()).await
            } else {
                peer.send_payload(&msg.from, msg.payload).await
            };
            if let Err(e) = answered {
                tracing::debug!(peer = peer.id(), to = %msg.from, error = %e, "echo reply failed");
            }
        }
    }))
}
