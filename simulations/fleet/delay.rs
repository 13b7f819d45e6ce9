//! Latency without netem: the kernels this runs on have no netem qdisc, so
//! a namespace's outgoing packets are queued to user space (iptables'
//! NFQUEUE target) and this process lets each one go once it has waited
//! the delay. One runs in each namespace while the latency lasts.

use std::time::Duration;
#[cfg(target_os = "linux")]
use std::{collections::VecDeque, io::ErrorKind, time::Instant};

/// The netfilter queue the fleet's rules send packets to.
pub(crate) const QUEUE: u16 = 7;

/// How long a packet may wait beyond its delay (the polling interval).
#[cfg(target_os = "linux")]
const POLL: Duration = Duration::from_millis(1);

/// Netfilter queues are Linux's: elsewhere the latency scenario is refused.
#[cfg(not(target_os = "linux"))]
pub fn run(_delay: Duration) -> Result<(), String> {
    Err("latency needs Linux's netfilter queues".into())
}

/// Holds every packet queued to [`QUEUE`] for `delay`, in arrival order,
/// until killed.
#[cfg(target_os = "linux")]
pub(crate) fn run(delay: Duration) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("netfilter queue: {what}: {e}");
    let mut queue = nfq::Queue::open().map_err(|e| io("open", e))?;
    queue.bind(QUEUE).map_err(|e| io("bind", e))?;
    // Up to a few seconds of traffic waits here; past that, packets pass
    // undelayed rather than being dropped.
    queue
        .set_queue_max_len(QUEUE, 65_535)
        .map_err(|e| io("queue length", e))?;
    queue
        .set_fail_open(QUEUE, true)
        .map_err(|e| io("fail open", e))?;
    queue.set_nonblocking(true);
    println!("delaying");
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        loop {
            match queue.recv() {
                Ok(msg) => held.push_back((Instant::now() + delay, msg)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(io("receive", e)),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, mut msg)) = held.pop_front() {
                msg.set_verdict(nfq::Verdict::Accept);
                queue.verdict(msg).map_err(|e| io("verdict", e))?;
            }
        }
        std::thread::sleep(POLL);
    }
}
