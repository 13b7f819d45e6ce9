//! Echo peers: answer every message by sending its payload back.

use distribus::{Host, Result};
use tokio::task::JoinHandle;

/// Creates peer `id` on `host` and answers each message it receives with
/// the same payload, to the sender. Replies go out one at a time, in order;
/// a failed reply is logged and the next message is served.
pub fn spawn(host: &Host, id: &str) -> Result<JoinHandle<()>> {
    let peer = host.create(id)?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = peer.recv().await {
            if msg.from == peer.id() {
                continue;
            }
            if let Err(e) = peer.send_payload(&msg.from, msg.payload).await {
                tracing::debug!(peer = peer.id(), to = %msg.from, error = %e, "echo reply failed");
            }
        }
    }))
}
