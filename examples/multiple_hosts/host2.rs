//! Host 2: listens on ws://localhost:3001, joins host 1 at
//! ws://localhost:3000, and peer2 says "hello" to peer1.

use std::time::Duration;

use distribus::{Error, Host, HostConfig, SendError};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let host2 = Host::new(HostConfig::default()).await?;
    host2.listen("/ip4/127.0.0.1/tcp/3001/ws").await?;
    host2.join("ws://localhost:3000").await?;
    println!("host2 joined ws://localhost:3000");

    let peer2 = host2.create("peer2")?;
    // peer1's directory entry may still be on its way: retry briefly.
    let mut tries = 0;
    loop {
        match peer2.send("peer1", "hello").await {
            Ok(()) => break,
            Err(SendError::PeerNotFound(_)) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(msg) = peer2.recv().await {
        let text: String = msg.decode()?;
        println!("peer2 received message from {}: {}", msg.from, text);
    }
    host2.close().await;
    Ok(())
}
