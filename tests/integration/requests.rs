//! Request/reply between peers, across hosts and on one host.

use crate::common;

use std::time::Duration;

use common::*;
use distribus::{Peer, SendError};
use futures::stream::{FuturesUnordered, StreamExt};

/// Answers every request to `peer` with its number plus one, until the
/// peer is removed; returns how many plain messages it saw.
fn serve_increment(peer: Peer) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut plain = 0;
        while let Some(m) = peer.recv().await {
            if !m.is_request() {
                plain += 1;
                continue;
            }
            let n: u32 = m.decode().expect("a number");
            m.reply(&peer, &(n + 1)).await.expect("reply delivered");
        }
        plain
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_across_hosts_and_on_one_host_get_their_own_replies() {
    let (a, b, alice, bob) = alice_and_bob().await;
    let carol = a.create("carol").unwrap();
    let bob_served = serve_increment(bob);
    let carol_served = serve_increment(carol);

    // 500 requests in flight at once, to a remote and to a local peer.
    let mut asks: FuturesUnordered<_> = (0..500u32)
        .map(|n| {
            let alice = alice.clone();
            let to = if n % 2 == 0 { "bob" } else { "carol" };
            async move {
                let r = alice.request(to, &n, Duration::from_secs(10)).await;
                (n, to, r)
            }
        })
        .collect();
    let mut answered = 0;
    while let Some((n, to, r)) = within("replies", asks.next()).await {
        let reply = r.unwrap_or_else(|e| panic!("request {n} to {to}: {e}"));
        assert_eq!(reply.from, to);
        assert_eq!(reply.decode::<u32>().unwrap(), n + 1);
        assert!(!reply.is_request());
        answered += 1;
    }
    assert_eq!(answered, 500);
    // Replies go to their requests, never into the requester's inbox.
    assert_eq!(alice.pending(), 0);
    assert_eq!(a.stats().replies, 500);
    assert_eq!(a.stats().requests, 500);
    // A plain message is not a request.
    alice.send("bob", &7u32).await.unwrap();
    a.remove("carol").unwrap();
    b.remove("bob").unwrap();
    assert_eq!(bob_served.await.unwrap(), 1);
    assert_eq!(carol_served.await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_times_out_and_its_late_reply_is_an_error_to_the_replier() {
    let (a, _b, alice, bob) = alice_and_bob().await;

    let asked = alice.request("bob", &1u32, Duration::from_millis(300));
    let (answer, request) = tokio::join!(asked, within("bob receives", bob.recv()));
    assert_eq!(answer.unwrap_err(), SendError::Timeout);
    let request = request.unwrap();
    assert!(request.is_request());
    // The requester stopped waiting: the replier is told, across hosts.
    match request.reply(&bob, &2u32).await {
        Err(SendError::NoRequest(_)) => {}
        other => panic!("late reply: {other:?}"),
    }
    assert_eq!(a.stats().replies_unmatched, 1);
    // And nothing landed in alice's inbox.
    assert_eq!(alice.pending(), 0);

    // A request to nobody fails as a send does, at once.
    match alice.request("nobody", &1u32, Duration::from_secs(5)).await {
        Err(SendError::PeerNotFound(id)) => assert_eq!(id, "nobody"),
        other => panic!("request to nobody: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_removed_requester_is_not_found() {
    let (a, _b, alice, bob) = alice_and_bob().await;
    let waiting = tokio::spawn({
        let alice = alice.clone();
        async move { alice.request("bob", &1u32, Duration::from_secs(30)).await }
    });
    let request = within("bob receives", bob.recv()).await.unwrap();
    a.remove("alice").unwrap();
    match request.reply(&bob, &2u32).await {
        Err(SendError::PeerNotFound(id)) => assert_eq!(id, "alice"),
        other => panic!("reply to a removed requester: {other:?}"),
    }
    waiting.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_asked_peer_can_answer_and_a_plain_message_cannot_be_answered() {
    let (a, b, alice, bob) = alice_and_bob().await;
    let mallory = b.create("mallory").unwrap();
    wait_found(&a, "mallory", &b).await;

    let asked = tokio::spawn({
        let alice = alice.clone();
        async move { alice.request("bob", &1u32, Duration::from_secs(30)).await }
    });
    let request = within("bob receives", bob.recv()).await.unwrap();
    let id = request.request_id().unwrap();
    // Another peer that learnt the id cannot answer for bob.
    match mallory.reply("alice", id, &666u32).await {
        Err(SendError::NoRequest(_)) => {}
        other => panic!("mallory's reply: {other:?}"),
    }
    // Bob's reply does.
    request.reply(&bob, &2u32).await.unwrap();
    let reply = within("alice's reply", asked).await.unwrap().unwrap();
    assert_eq!(
        (reply.from.as_str(), reply.decode::<u32>().unwrap()),
        ("bob", 2)
    );
    // Answered once: a second reply is refused.
    match request.reply(&bob, &3u32).await {
        Err(SendError::NoRequest(_)) => {}
        other => panic!("second reply: {other:?}"),
    }

    // A plain message has nothing to answer.
    alice.send("bob", &5u32).await.unwrap();
    let plain = within("bob receives", bob.recv()).await.unwrap();
    assert_eq!(plain.request_id(), None);
    match plain.reply(&bob, &6u32).await {
        Err(SendError::NoRequest(_)) => {}
        other => panic!("reply to a plain message: {other:?}"),
    }
    assert_eq!(alice.pending(), 0);
}
