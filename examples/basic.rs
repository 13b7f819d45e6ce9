//! Two peers on one host, as in the original distribus README.
//!
//! ```text
//! cargo run --example basic
//! ```

use distribus::{Host, HostConfig};

#[tokio::main]
async fn main() -> Result<(), distribus::Error> {
    let host = Host::new(HostConfig::default()).await?;
    let peer1 = host.create("peer1")?;
    let peer2 = host.create("peer2")?;

    peer2.send("peer1", "hello peer1!").await?;

    if let Some(msg) = peer1.recv().await {
        let text: String = msg.decode()?;
        println!("received message from {}: {}", msg.from, text);
    }
    host.close().await;
    Ok(())
}
