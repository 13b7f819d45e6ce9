//! Host 1: listens on ws://localhost:3000 and holds peer1, which answers
//! every "hello" with "hi". Start it first, then `host2`.

use distribus::{Host, HostConfig};

#[tokio::main]
async fn main() -> Result<(), distribus::Error> {
    let host1 = Host::new(HostConfig::default()).await?;
    let addrs = host1.listen("/ip4/127.0.0.1/tcp/3000/ws").await?;
    println!("host1 listening on ws://localhost:3000 ({})", addrs[0]);

    let peer1 = host1.create("peer1")?;
    while let Some(msg) = peer1.recv().await {
        let text: String = msg.decode()?;
        println!("peer1 received message from {}: {}", msg.from, text);
        peer1.send(&msg.from, "hi").await?;
        if std::env::args().any(|a| a == "--once") {
            break;
        }
    }
    host1.close().await;
    Ok(())
}
