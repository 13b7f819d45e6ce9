//! The fleet's network: one namespace per process slot, each with a veth
//! into one bridge in the root namespace, and nftables rules inside each
//! namespace for faults (partitions, loss). Everything is created with the
//! `ip` and `nft` commands and removed when [`Net`] is dropped.
//!
//! `tc netem` would be the usual tool for loss and latency, but the kernels
//! this runs on here (and in CI) have no netem qdisc: nftables' `numgen`
//! drops packets at random just as well, and latency is added in user
//! space ([`crate::delay`]) on packets iptables queues to it.

use std::process::Command;

/// Prefix of every name the harness creates (namespaces, links, tables),
/// so a run can clear what a killed run left.
const PREFIX: &str = "dfl";
/// The bridge in the root namespace.
const BRIDGE: &str = "dflbr0";
/// The fleet's subnet is 10.213.0.0/24; the bridge is .254.
const SUBNET: &str = "10.213.0";

/// Runs a command and fails with its stderr.
pub(crate) fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Feeds `script` to `nft -f -` inside namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The fleet's namespaces; removed on drop.
pub(crate) struct Net {
    slots: usize,
}

impl Net {
    /// Namespace name of slot `i`.
    pub(crate) fn ns(i: usize) -> String {
        format!("{PREFIX}-{i}")
    }

    /// IPv4 address of slot `i`.
    pub(crate) fn ip(i: usize) -> String {
        format!("{SUBNET}.{}", i + 1)
    }

    /// Creates a bridge and `slots` namespaces attached to it (clearing
    /// whatever an earlier run left).
    pub(crate) fn create(slots: usize) -> Result<Net, String> {
        if slots > 200 {
            return Err("at most 200 slots".into());
        }
        clear_leftovers();
        run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        run(
            "ip",
            &["addr", "add", &format!("{SUBNET}.254/24"), "dev", BRIDGE],
        )?;
        run("ip", &["link", "set", BRIDGE, "up"])?;
        let net = Net { slots };
        for i in 0..slots {
            let (ns, outer, inner) = (Net::ns(i), format!("{PREFIX}h{i}"), format!("{PREFIX}n{i}"));
            run("ip", &["netns", "add", &ns])?;
            run(
                "ip",
                &[
                    "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                ],
            )?;
            run("ip", &["link", "set", &inner, "netns", &ns])?;
            run("ip", &["link", "set", &outer, "master", BRIDGE])?;
            run("ip", &["link", "set", &outer, "up"])?;
            let exec = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &ns, "ip"];
                all.extend_from_slice(args);
                run("ip", &all)
            };
            exec(&["addr", "add", &format!("{}/24", Net::ip(i)), "dev", &inner])?;
            exec(&["link", "set", &inner, "up"])?;
            exec(&["link", "set", "lo", "up"])?;
            nft(
                &ns,
                "table inet fleet {\n\
                 chain out { type filter hook output priority 0; }\n}\n",
            )?;
        }
        Ok(net)
    }

    /// Drops every packet each slot of `from` sends to a slot of `to` (the
    /// other way still passes: cut both ways for a full partition).
    pub(crate) fn cut(&self, from: &[usize], to: &[usize]) -> Result<(), String> {
        let ips: Vec<String> = to.iter().map(|&i| Net::ip(i)).collect();
        let set = ips.join(", ");
        for &i in from {
            nft(
                &Net::ns(i),
                &format!("add rule inet fleet out ip daddr {{ {set} }} drop\n"),
            )?;
        }
        Ok(())
    }

    /// Drops `percent` of the packets every slot sends, at random.
    pub(crate) fn loss(&self, percent: u32) -> Result<(), String> {
        for i in 0..self.slots {
            nft(
                &Net::ns(i),
                &format!("add rule inet fleet out numgen random mod 100 < {percent} drop\n"),
            )?;
        }
        Ok(())
    }

    /// Queues every packet a slot sends on its link to the delayer in its
    /// namespace (which must be running, see [`crate::delay`]).
    pub(crate) fn queue_to_delayer(&self, slot: usize, on: bool) -> Result<(), String> {
        let queue = crate::delay::QUEUE.to_string();
        let link = format!("{PREFIX}n{slot}");
        let op = if on { "-A" } else { "-D" };
        run(
            "ip",
            &[
                "netns",
                "exec",
                &Net::ns(slot),
                "iptables",
                op,
                "OUTPUT",
                "-o",
                &link,
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue,
                "--queue-bypass",
            ],
        )
    }

    /// How many slots there are.
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// Removes every fault rule.
    pub(crate) fn heal(&self) -> Result<(), String> {
        for i in 0..self.slots {
            nft(&Net::ns(i), "flush chain inet fleet out\n")?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        clear_leftovers();
    }
}

/// Removes the harness's namespaces and bridge, if any.
fn clear_leftovers() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(&format!("{PREFIX}-")) {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "7: dflh0@if6: <...": a veth whose namespace is still going.
            let name = line.split(':').nth(1).unwrap_or("").trim();
            let name = name.split('@').next().unwrap_or("");
            if name.starts_with(PREFIX) {
                let _ = run("ip", &["link", "del", name]);
            }
        }
    }
}
