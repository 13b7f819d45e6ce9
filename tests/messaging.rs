//! Direct messages between peers, on one host and across hosts.

mod common;

use common::*;
use distribus::{Error, HostConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Greeting {
    text: String,
    n: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_exchange_typed_and_json_messages() {
    let cfg = HostConfig::for_tests();
    let (a, _) = mem_host(cfg.clone()).await;
    let (b, b_addr) = mem_host(cfg).await;
    assert_eq!(a.join(&b_addr.to_string()).await.unwrap(), b.id());
    let alice = a.create("alice").unwrap();
    let bob = b.create("bob").unwrap();
    wait_found(&a, "bob", &b).await;
    wait_found(&b, "alice", &a).await;

    let g = Greeting { text: "hello".into(), n: 1 };
    alice.send("bob", &g).await.unwrap();
    let m = within("bob receives", bob.recv()).await.unwrap();
    assert_eq!(m.from, "alice");
    assert_eq!(m.decode::<Greeting>().unwrap(), g);

    let v = serde_json::json!({"text": "hi", "list": [1, 2, 3], "nested": {"ok": true}});
    bob.send_json("alice", &v).await.unwrap();
    let m = within("alice receives", alice.recv()).await.unwrap();
    assert_eq!(m.from, "bob");
    assert_eq!(m.decode::<serde_json::Value>().unwrap(), v);
    assert!(a.stats().sent_remote >= 1);
}
