//! A working two-host network on this machine, in one process over TCP
//! loopback: peers on both hosts exchange messages, find each other, and a
//! channel publish reaches subscribers on both hosts.
//!
//! ```text
//! cargo run --release --example demo
//! ```

use std::time::Duration;

use distribus::{Error, Host, HostConfig};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let alpha = Host::new(HostConfig::default()).await?;
    let beta = Host::new(HostConfig::default()).await?;
    let a_addr = alpha.listen("/ip4/127.0.0.1/tcp/0").await?.remove(0);
    let b_addr = beta.listen("/ip4/127.0.0.1/tcp/0/ws").await?.remove(0);
    println!("host alpha {} listening on {a_addr}", alpha.id());
    println!("host beta  {} listening on {b_addr}", beta.id());

    beta.join(&a_addr.to_string()).await?;
    println!(
        "beta joined alpha; beta knows {} other host(s)",
        beta.members().await?.len()
    );

    let alice = alpha.create("alice")?;
    let bob = beta.create("bob")?;
    let mut news_a = alpha.subscribe("news").await?;
    let mut news_b = beta.subscribe("news").await?;

    // Directory entries are registered in the background; wait until visible.
    for _ in 0..100 {
        if alpha.find("bob").await.is_ok() && beta.find("alice").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let loc = alpha.find("bob").await?;
    println!("alpha finds bob on host {}", loc.host);

    alice.send("bob", "hello bob").await?;
    let m = bob.recv().await.ok_or(Error::Closed)?;
    println!("bob   <- {}: {}", m.from, m.decode::<String>()?);
    bob.send("alice", "hi alice").await?;
    let m = alice.recv().await.ok_or(Error::Closed)?;
    println!("alice <- {}: {}", m.from, m.decode::<String>()?);

    let json = serde_json::json!({"kind": "greeting", "tags": ["json", "works"]});
    alice.send_json("bob", &json).await?;
    let m = bob.recv().await.ok_or(Error::Closed)?;
    println!("bob   <- {}: {}", m.from, m.decode::<serde_json::Value>()?);

    beta.publish("news", "distribus is up").await?;
    for (name, sub) in [("alpha", &mut news_a), ("beta", &mut news_b)] {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .map_err(|_| Error::Timeout)?
            .ok_or(Error::Closed)?;
        println!(
            "{name} subscriber got on #{}: {}",
            m.channel,
            m.decode::<String>()?
        );
    }

    match alice.send("nobody", "?").await {
        Err(e) => println!("sending to an unknown peer: {e}"),
        Ok(()) => println!("unexpected: delivered to nobody"),
    }

    beta.close().await;
    alpha.close().await;
    println!("both hosts closed; demo done");
    Ok(())
}
