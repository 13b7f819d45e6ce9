//! Publish and subscribe on one host, as in the original distribus README.
//!
//! ```text
//! cargo run --example pubsub
//! ```

use distribus::{Host, HostConfig};

#[tokio::main]
async fn main() -> Result<(), distribus::Error> {
    let host = Host::new(HostConfig::default()).await?;
    let mut news = host.subscribe("news").await?;

    host.publish("news", "my message").await?;

    if let Some(msg) = news.recv().await {
        let text: String = msg.decode()?;
        println!("received news message: {text}");
    }
    host.close().await;
    Ok(())
}
