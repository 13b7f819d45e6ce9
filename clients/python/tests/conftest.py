"""Starts two real distribus-node processes (a seed and one joined to it),
each with a client gateway on an OS-chosen port."""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def node_binary() -> str:
    if os.environ.get("DISTRIBUS_NODE"):
        return os.environ["DISTRIBUS_NODE"]
    for profile in ("release", "debug"):
        p = REPO / "target" / profile / "distribus-node"
        if p.exists():
            return str(p)
    raise RuntimeError("no distribus-node binary: run `cargo build --release` or set DISTRIBUS_NODE")


class Node:
    def __init__(self, *extra: str):
        args = [node_binary(), "--listen", "/ip4/127.0.0.1/tcp/0", "--gateway", "127.0.0.1:0",
                "--heartbeat", "250ms", "--lease", "3s", "-q", *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBUS_")}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env)
        self.url = self.addr = None
        deadline = time.monotonic() + 20
        while (self.url is None or self.addr is None) and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if m := re.match(r"client gateway on (\S+)", line):
                self.url = m.group(1)
            if m := re.match(r"listening on (\S+)", line):
                self.addr = self.addr or m.group(1)
        if self.url is None or self.addr is None:
            self.stop()
            raise RuntimeError("distribus-node did not start")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def nodes():
    a = Node()
    b = Node("--join", a.addr)
    yield a, b
    a.stop()
    b.stop()
