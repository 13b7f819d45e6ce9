"""Attach peers to a distribus node from Python, over the node's client
gateway (docs/CLIENT-PROTOCOL.md).

    async with distribus_client.connect("ws://127.0.0.1:7402") as host:
        peer = await host.create("p")
        await peer.send("q", {"text": "Hi"})
        async for message in peer:
            print(message.sender, message.data)
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, WebSocketException

__all__ = ["connect", "Host", "Peer", "Subscription", "Message", "DistribusError"]

PROTOCOL_VERSION = 1
# Most requests in one batch frame (the gateway takes up to 4096).
_MAX_BATCH = 512
_BATCH_BYTES = 256 * 1024
# Events are acknowledged after this many, or this many seconds after the
# first unacknowledged one: well inside the gateway's window (1,024).
_ACK_EVERY = 128
_ACK_DELAY = 0.02


class DistribusError(Exception):
    """An error answer of the gateway; ``code`` names it (``not_found``,
    ``timeout``, ``inbox_full``, ``unauthorized``, …, or ``disconnected``
    when the connection dropped before the answer)."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


@dataclass
class Message:
    """A message to a peer (``sender`` set) or on a channel (``channel`` set).
    ``data`` is the JSON value; a typed value a Rust host sent is ``bytes``
    with its ``encoding``. ``request`` is set when the sender waits for a
    reply (:meth:`reply`)."""

    data: Any
    sender: Optional[str] = None
    channel: Optional[str] = None
    encoding: str = "json"
    request: Optional[int] = None
    _peer: Optional["Peer"] = field(default=None, repr=False, compare=False)

    async def reply(self, data: Any) -> None:
        """Answers this request; returns once the requester has the answer.
        Raises ``DistribusError('no_request')`` when the message is not a
        request or its requester no longer waits (answered, timed out)."""
        if self.request is None or self._peer is None:
            raise DistribusError("no_request", "this message is not a request")
        peer = self._peer
        await peer.host._request({"op": "reply", "from": peer.id, "to": self.sender,
                                  "request": self.request, "data": data})


def _message(frame: dict, peer: Optional["Peer"] = None) -> Message:
    if "data" in frame:
        m = Message(frame["data"], frame.get("from"), frame.get("channel"))
    else:
        raw = base64.b64decode(frame.get("base64", ""))
        m = Message(raw, frame.get("from"), frame.get("channel"), frame.get("encoding", "?"))
    if peer is not None and isinstance(frame.get("request"), int):
        m.request = frame["request"]
        m._peer = peer
    return m


class _Inbox:
    """Messages waiting for ``async for``; ends with ``None``."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()

    def __aiter__(self):
        return self

    async def __anext__(self) -> Message:
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def recv(self, timeout: Optional[float] = None) -> Message:
        """The next message (``asyncio.TimeoutError`` after ``timeout`` s)."""
        return await asyncio.wait_for(self.__anext__(), timeout)


class Peer(_Inbox):
    """A peer living on the node, owned by this connection. Iterate it
    (``async for``) to receive."""

    def __init__(self, host: "Host", id: str):
        super().__init__()
        self.host = host
        self.id = id

    async def send(self, to: str, data: Any) -> None:
        """Sends ``data`` (any JSON value); returns once the recipient's
        inbox has it."""
        await self.host._request({"op": "send", "from": self.id, "to": to, "data": data})

    async def request(self, to: str, data: Any, timeout: Optional[float] = None) -> Message:
        """Sends ``data`` as a request and returns the reply (``sender`` is
        ``to``). Raises ``DistribusError('timeout')`` when no reply comes in
        ``timeout`` seconds (default: the gateway's, 10 s)."""
        req = {"op": "request", "from": self.id, "to": to, "data": data}
        if timeout is not None:
            req["timeout"] = max(0, int(timeout * 1000))
        return _message(await self.host._request(req))

    async def broadcast(self, data: Any) -> dict:
        """Delivers ``data`` to every peer on every host, once each, from
        this peer; returns ``{"hosts", "peers", "missed", "failed"}``."""
        return await self.host._request({"op": "broadcast", "from": self.id, "data": data})

    async def send_group(self, pattern: str, data: Any) -> dict:
        """Deliver ``data`` to every peer whose id matches ``pattern``
        (``room.42.*``, ``room.>``), on any host, once each, from this peer;
        returns ``{hosts, peers, missed, failed}``."""
        return await self.host._request(
            {"op": "send_group", "from": self.id, "to": pattern, "data": data}
        )


class Subscription(_Inbox):
    """Messages published on one channel (or, for a member of a queue group,
    those the group gave this member). Iterate it (``async for``)."""

    def __init__(self, host: "Host", channel: str, group: Optional[str] = None):
        super().__init__()
        self.host = host
        self.channel = channel
        #: The queue group, for a member of one.
        self.group = group

    async def close(self) -> None:
        """Ends the subscription."""
        if self.group is None:
            await self.host.unsubscribe(self.channel)
        else:
            await self.host.unsubscribe_queue(self.channel, self.group)


class Host:
    """A connection to a node's client gateway; make one with :func:`connect`."""

    def __init__(self, url: str, token: Optional[str], reconnect: bool,
                 reconnect_delay: float, reconnect_decay: float, reconnect_timeout: float,
                 ssl: Any = None):
        self.url = url
        self.ssl = ssl
        self.token = token
        self.reconnect = reconnect
        self.reconnect_delay = reconnect_delay
        self.reconnect_decay = reconnect_decay
        self.reconnect_timeout = reconnect_timeout
        self.id: Optional[str] = None
        self.session: Optional[str] = None
        self.peers: dict[str, Peer] = {}
        self.channels: dict[str, Subscription] = {}
        self.queues: dict[tuple[str, str], Subscription] = {}
        self._ws = None
        self._next_id = 1
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: Optional[asyncio.Task] = None
        self._writer: Optional[asyncio.Task] = None
        # Requests made while the writer was busy go out as one batch frame.
        self._outbox: list[str] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._connected = asyncio.Event()
        # Events are numbered; the gateway keeps each until acknowledged and
        # sends the unacknowledged ones again after a resume.
        self._seen = 0
        self._acked = 0
        self._ack_timer: Optional[asyncio.TimerHandle] = None
        self._hello_id = 0

    async def _open(self) -> dict:
        try:
            extra = {"ssl": self.ssl} if self.ssl is not None else {}
            self._ws = await ws_connect(self.url, compression=None, max_size=64 << 20, **extra)
        except (OSError, WebSocketException, asyncio.TimeoutError) as e:
            raise DistribusError("unreachable", f"cannot connect to {self.url}: {e}") from e
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read(self._ws))
        self._outbox = []
        self._writer = loop.create_task(self._write(self._ws))
        self._connected.set()
        hello: dict[str, Any] = {"op": "hello", "version": PROTOCOL_VERSION, "batch": True, "acks": True}
        if self.token:
            hello["token"] = self.token
        if self.session:
            hello["resume"] = self.session
            hello["seq"] = self._seen
        self._acked = self._seen
        self._hello_id = self._next_id
        try:
            welcome = await self._request(hello)
        except DistribusError:
            self._closed = True
            await self._ws.close()
            raise
        self.id = welcome["host"]
        self.session = welcome["session"]
        self.limits = welcome["limits"]
        return welcome

    async def _write(self, ws) -> None:
        """Sends what waits in the outbox, in order, as batch frames."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                out, self._outbox = self._outbox, []
                # Each frame stays under _MAX_BATCH requests and
                # _BATCH_BYTES, so it never passes the gateway's frame limit
                # unless one request alone does.
                part: list[str] = []
                size = 0
                for item in out:
                    if part and (len(part) == _MAX_BATCH or size + len(item) > _BATCH_BYTES):
                        await ws.send(part[0] if len(part) == 1 else "[" + ",".join(part) + "]")
                        part, size = [], 0
                    part.append(item)
                    size += len(item) + 1
                if part:
                    await ws.send(part[0] if len(part) == 1 else "[" + ",".join(part) + "]")
        except (ConnectionClosed, OSError):
            pass

    async def _read(self, ws) -> None:
        try:
            async for text in ws:
                f = json.loads(text)
                if isinstance(f, list):
                    for item in f:
                        self._frame(item)
                else:
                    self._frame(f)
                self._ack_later()
        except (ConnectionClosed, OSError, ValueError):
            pass
        if ws is not self._ws:
            return
        self._connected.clear()
        if self._writer is not None:
            self._writer.cancel()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(DistribusError("disconnected", "the connection dropped before the answer"))
        self._pending.clear()
        if not self._closed and self.reconnect:
            asyncio.get_running_loop().create_task(self._reconnect())
        else:
            self._end_all()

    def _end_all(self) -> None:
        for inbox in [*self.peers.values(), *self.channels.values(), *self.queues.values()]:
            inbox.queue.put_nowait(None)

    async def _reconnect(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout
        delay = self.reconnect_delay
        while not self._closed and loop.time() < deadline:
            await asyncio.sleep(delay)
            delay *= self.reconnect_decay
            try:
                welcome = await self._open()
            except DistribusError as e:
                if e.code in ("unauthorized", "unsupported_version"):
                    break
                continue
            if not welcome["resumed"]:
                await self._restore()
            return
        self._closed = True
        self._end_all()

    async def _restore(self) -> None:
        """The session expired on the node: make the peers and subscriptions again."""
        for id in list(self.peers):
            try:
                await self._request({"op": "create", "peer": id})
            except DistribusError:
                self.peers.pop(id).queue.put_nowait(None)
        for channel in list(self.channels):
            await self._request({"op": "subscribe", "channel": channel})
        for channel, queue in list(self.queues):
            await self._request({"op": "subscribe", "channel": channel, "queue": queue})

    def _ack_later(self) -> None:
        """Acknowledges at once after _ACK_EVERY events, else soon."""
        if self._seen == self._acked:
            return
        if self._seen - self._acked >= _ACK_EVERY:
            self._ack_now()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(_ACK_DELAY, self._ack_now)

    def _ack_now(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._seen == self._acked or not self._connected.is_set():
            return
        self._acked = self._seen
        self._outbox.append(f'{{"op":"ack","seq":{self._seen}}}')
        self._wake.set()

    def _frame(self, f: dict) -> None:
        event = f.get("event")
        seq = f.get("seq")
        if seq is not None:
            if seq <= self._seen:
                return  # sent again after a resume; already had
            self._seen = seq
        if event == "message":
            peer = self.peers.get(f.get("peer"))
            if peer:
                peer.queue.put_nowait(_message(f, peer))
        elif event == "publish":
            # Through a wildcard subscription, the event names its pattern;
            # to a member of a queue group, its group.
            pattern = f.get("subscription", f.get("channel"))
            if "queue" in f:
                sub = self.queues.get((pattern, f["queue"]))
            else:
                sub = self.channels.get(pattern)
            if sub:
                sub.queue.put_nowait(_message(f))
        elif event == "removed":
            peer = self.peers.pop(f.get("peer"), None)
            if peer:
                peer.queue.put_nowait(None)
        elif event is None and "id" in f:
            if f["id"] == self._hello_id and not (f.get("ok") or {}).get("resumed"):
                # A new session numbers its events from 1.
                self._seen = self._acked = 0
            fut = self._pending.pop(f["id"], None)
            if fut is None or fut.done():
                return
            if "error" in f:
                e = f["error"]
                fut.set_exception(DistribusError(e.get("code", "?"), e.get("message", "")))
            else:
                fut.set_result(f.get("ok"))

    async def _request(self, req: dict) -> Any:
        if not self._connected.is_set():
            raise DistribusError("disconnected", "not connected to the gateway")
        id = self._next_id
        self._next_id += 1
        req["id"] = id
        fut = asyncio.get_running_loop().create_future()
        self._pending[id] = fut
        self._outbox.append(json.dumps(req, separators=(",", ":")))
        self._wake.set()
        return await fut

    async def create(self, id: str) -> Peer:
        """Creates a peer on the node; returns once the network can find it."""
        if id in self.peers:
            raise DistribusError("id_exists", f"peer {id!r} exists")
        peer = Peer(self, id)
        self.peers[id] = peer
        try:
            await self._request({"op": "create", "peer": id})
        except DistribusError:
            self.peers.pop(id, None)
            raise
        return peer

    async def remove(self, peer) -> None:
        """Removes a peer (by id or object) and withdraws it."""
        id = peer if isinstance(peer, str) else peer.id
        p = self.peers.pop(id, None)
        if p:
            p.queue.put_nowait(None)
        await self._request({"op": "remove", "peer": id})

    async def subscribe(self, channel: str) -> Subscription:
        """Subscribes to ``channel``, or to a pattern (``sensors.*.temp``,
        ``logs.>``); iterate the result to receive (``message.channel`` is
        the channel each came on)."""
        sub = self.channels.get(channel)
        if sub:
            return sub
        sub = Subscription(self, channel)
        self.channels[channel] = sub
        try:
            await self._request({"op": "subscribe", "channel": channel})
        except DistribusError:
            self.channels.pop(channel, None)
            raise
        return sub

    async def unsubscribe(self, channel: str) -> None:
        """Ends the subscription to ``channel``."""
        sub = self.channels.pop(channel, None)
        if sub:
            sub.queue.put_nowait(None)
            await self._request({"op": "unsubscribe", "channel": channel})

    async def subscribe_queue(self, channel: str, group: str) -> Subscription:
        """Joins the queue group ``group`` on ``channel`` (a name or pattern):
        each message published on a matching channel goes to one member of
        the group, on any node; iterate the result for this member's."""
        key = (channel, group)
        sub = self.queues.get(key)
        if sub:
            return sub
        sub = Subscription(self, channel, group)
        self.queues[key] = sub
        try:
            await self._request({"op": "subscribe", "channel": channel, "queue": group})
        except DistribusError:
            self.queues.pop(key, None)
            raise
        return sub

    async def unsubscribe_queue(self, channel: str, group: str) -> None:
        """Leaves the queue group ``group`` on ``channel``."""
        sub = self.queues.pop((channel, group), None)
        if sub:
            sub.queue.put_nowait(None)
            await self._request({"op": "unsubscribe", "channel": channel, "queue": group})

    async def publish(self, channel: str, data: Any) -> None:
        """Publishes ``data`` (any JSON value) on ``channel``."""
        await self._request({"op": "publish", "channel": channel, "data": data})

    async def broadcast(self, data: Any) -> dict:
        """Delivers ``data`` to every peer on every host, once each, from
        the node; returns ``{"hosts", "peers", "missed", "failed"}``."""
        return await self._request({"op": "broadcast", "data": data})

    async def send_group(self, pattern: str, data: Any) -> dict:
        """Deliver ``data`` to every peer whose id matches ``pattern``, on any
        host, once each, from the node; returns ``{hosts, peers, missed,
        failed}``."""
        return await self._request({"op": "send_group", "to": pattern, "data": data})

    async def find(self, id: str) -> dict:
        """Where a peer lives: ``{"host", "addrs", "round_trips"}``."""
        return await self._request({"op": "find", "peer": id})

    async def members(self) -> dict:
        """The other live hosts: ``{"self", "hosts": [...]}``."""
        return await self._request({"op": "members"})

    async def stats(self) -> dict:
        """The node's counters."""
        return await self._request({"op": "stats"})

    async def close(self) -> None:
        """Closes the connection; the node removes this connection's peers."""
        if self._closed:
            return
        self._closed = True
        if self._ws is not None:
            await self._ws.close(code=1000, reason="bye")
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=5)
        if self._writer is not None:
            self._writer.cancel()
        self._end_all()


class _Connecting:
    """``await connect(...)`` or ``async with connect(...) as host``."""

    def __init__(self, host: Host):
        self.host = host

    def __await__(self):
        return self._go().__await__()

    async def _go(self) -> Host:
        await self.host._open()
        return self.host

    async def __aenter__(self) -> Host:
        return await self._go()

    async def __aexit__(self, *exc) -> None:
        await self.host.close()


def connect(url: str, *, token: Optional[str] = None, reconnect: bool = True,
            reconnect_delay: float = 1.0, reconnect_decay: float = 2.0,
            reconnect_timeout: float = 30.0, ssl: Any = None) -> _Connecting:
    """Connects to a node's client gateway (``ws://host:7402``, or
    ``wss://`` with ``ssl``, an ``ssl.SSLContext`` that trusts its
    certificate, when the system's roots do not)."""
    return _Connecting(Host(url, token, reconnect, reconnect_delay, reconnect_decay,
                            reconnect_timeout, ssl))
