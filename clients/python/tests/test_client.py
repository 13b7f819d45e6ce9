"""distribus_client against two real distribus-node processes."""

import asyncio

import pytest

import distribus_client
from distribus_client import DistribusError


async def eventually(check, timeout=15.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            if await check():
                return
        except DistribusError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def test_peers_on_two_nodes_talk(nodes):
    a, b = nodes
    async with distribus_client.connect(a.url) as ha, distribus_client.connect(b.url) as hb:
        p = await ha.create("py-p")
        q = await hb.create("py-q")

        async def found():
            return (await ha.find("py-q"))["host"] == hb.id

        await eventually(found)
        await p.send("py-q", {"text": "Hi", "n": [1, 2]})
        m = await q.recv(10)
        assert (m.sender, m.data) == ("py-p", {"text": "Hi", "n": [1, 2]})

        # Many in flight at once: each answered, all in order.
        await asyncio.gather(*(q.send("py-p", i) for i in range(300)))
        got = [(await p.recv(10)).data for _ in range(300)]
        assert got == list(range(300))

        with pytest.raises(DistribusError) as e:
            await p.send("nobody", 1)
        assert e.value.code == "not_found"
        members = await ha.members()
        assert [h["host"] for h in members["hosts"]] == [hb.id]

    # Closed: the peers are withdrawn.
    async with distribus_client.connect(b.url) as hb:
        async def gone():
            try:
                await hb.find("py-p")
                return False
            except DistribusError as e:
                return e.code == "not_found"

        await eventually(gone)


async def test_requests_across_nodes_get_their_replies(nodes):
    a, b = nodes
    async with distribus_client.connect(a.url) as ha, distribus_client.connect(b.url) as hb:
        asker = await ha.create("py-asker")
        clock = await hb.create("py-clock")

        async def found():
            return (await ha.find("py-clock"))["host"] == hb.id

        await eventually(found)
        late = []

        async def serve():
            async for m in clock:
                if not m.request:
                    continue
                if m.data == "late":
                    await asyncio.sleep(0.3)
                    try:
                        await m.reply("too late")
                    except DistribusError as e:
                        late.append(e.code)
                else:
                    await m.reply({"asked": m.data, "by": m.sender})

        server = asyncio.create_task(serve())
        r = await asker.request("py-clock", "time?", timeout=5)
        assert (r.sender, r.data) == ("py-clock", {"asked": "time?", "by": "py-asker"})
        replies = await asyncio.gather(*(asker.request("py-clock", i) for i in range(100)))
        assert [x.data["asked"] for x in replies] == list(range(100))
        with pytest.raises(DistribusError) as e:
            await asker.request("py-clock", "late", timeout=0.1)
        assert e.value.code == "timeout"
        await eventually(lambda: asyncio.sleep(0, late == ["no_request"]))
        # A plain message cannot be answered.
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
        await asker.send("py-clock", "plain")
        m = await clock.recv(10)
        assert m.request is None
        with pytest.raises(DistribusError) as e:
            await m.reply(1)
        assert e.value.code == "no_request"


async def test_publish_and_subscribe_across_nodes(nodes):
    a, b = nodes
    async with distribus_client.connect(a.url) as ha, distribus_client.connect(b.url) as hb:
        sub = await hb.subscribe("py-news")

        async def known():
            return any("py-news" in h["channels"] for h in (await ha.members())["hosts"])

        await eventually(known)
        await ha.publish("py-news", {"headline": "python too"})
        m = await sub.recv(10)
        assert (m.channel, m.data) == ("py-news", {"headline": "python too"})
        await sub.close()
        received = [m async for m in sub]
        assert received == []


async def test_a_wildcard_subscription_gets_the_channels_it_matches(nodes):
    a, b = nodes
    async with distribus_client.connect(a.url) as ha, distribus_client.connect(b.url) as hb:
        sub = await hb.subscribe("py.*.temp")

        async def known():
            hosts = (await ha.members())["hosts"]
            return any(h["host"] == hb.id and "py.*.temp" in h["channels"] for h in hosts)

        await eventually(known)
        await ha.publish("py.attic.humidity", 1)
        await ha.publish("py.attic.temp", 2)
        m = await sub.recv(10)
        assert (m.channel, m.data) == ("py.attic.temp", 2)
        with pytest.raises(DistribusError) as e:
            await ha.publish("py.>", 3)
        assert e.value.code == "invalid_channel"


async def test_a_broadcast_reaches_every_peer_once(nodes):
    a, b = nodes
    async with distribus_client.connect(a.url) as ha, distribus_client.connect(b.url) as hb:
        caster = await ha.create("py-caster")
        listener = await hb.create("py-listener")
        report = await caster.broadcast({"all": 1})
        assert report["hosts"] == 2 and report["failed"] == [], report
        assert report["peers"] >= 2, report
        assert (await hb.broadcast("from b"))["hosts"] == 2
        for p in (caster, listener):
            got = [(m.sender, m.data) for m in [await p.recv(10), await p.recv(10)]]
            assert got == [("py-caster", {"all": 1}), (hb.id, "from b")]


async def test_a_group_send_reaches_the_matching_peers_only(nodes):
    a, b = nodes
    async with distribus_client.connect(a.url) as ha, distribus_client.connect(b.url) as hb:
        ann = await ha.create("pycrew.ann")
        bo = await hb.create("pycrew.bo")
        out = await hb.create("pyguest.cy")
        report = await out.send_group("pycrew.*", "shift")
        assert report == {"hosts": 2, "peers": 2, "missed": 0, "failed": []}, report
        for p in (ann, bo):
            m = await p.recv(10)
            assert (m.sender, m.data) == ("pyguest.cy", "shift")
        await ann.send("pyguest.cy", "after")
        # The sender does not match: the first it gets is the later message.
        m = await out.recv(10)
        assert (m.sender, m.data) == ("pycrew.ann", "after")
        assert (await ha.send_group("pycrew.bo", 1))["peers"] == 1
        with pytest.raises(DistribusError) as e:
            await out.send_group("pycrew..x", 1)
        assert e.value.code == "invalid_pattern"


async def test_queue_group_members_share_the_publishes(nodes):
    a, b = nodes
    async with distribus_client.connect(a.url) as ha, distribus_client.connect(b.url) as hb:
        wa = await ha.subscribe_queue("pyjobs.*", "workers")
        wb = await hb.subscribe_queue("pyjobs.*", "workers")

        async def known():
            hosts = (await ha.members())["hosts"]
            return any(h["host"] == hb.id and h["queues"] for h in hosts)

        await eventually(known)
        for k in range(10):
            await ha.publish("pyjobs.print", k)
        got = []
        for w in (wa, wb):
            for _ in range(5):
                m = await w.recv(10)
                assert m.channel == "pyjobs.print"
                got.append(m.data)
        assert sorted(got) == list(range(10))
        await wb.close()
        with pytest.raises(DistribusError) as e:
            await ha.subscribe_queue("pyjobs", "")
        assert e.value.code == "invalid_channel"


async def test_a_dropped_connection_resumes_its_session(nodes):
    a, b = nodes
    async with distribus_client.connect(a.url, reconnect_delay=0.1) as ha, \
            distribus_client.connect(b.url) as hb:
        roamer = await ha.create("py-roamer")
        talker = await hb.create("py-talker")

        async def found():
            return (await hb.find("py-roamer"))["host"] == ha.id

        await eventually(found)
        session = ha.session
        # Every frame the gateway writes on this connection from now on is
        # lost (never read, never acknowledged), then the connection drops:
        # after the resume they come again, once each. (Only this
        # connection's: a frame read late would acknowledge those before it,
        # which a real connection, delivering in order, never does.)
        lost, read = ha._ws, ha._frame

        def lose_on_old_connection(f):
            if ha._ws is not lost:
                read(f)

        ha._frame = lose_on_old_connection
        for n in range(3):
            await talker.send("py-roamer", n)
        await lost.close(code=4000, reason="network trouble")
        await talker.send("py-roamer", "while away")

        async def back():
            return ha._connected.is_set() and ha.session == session

        await eventually(back)
        got = [(m.sender, m.data) for m in [await roamer.recv(10) for _ in range(4)]]
        assert got == [("py-talker", 0), ("py-talker", 1), ("py-talker", 2), ("py-talker", "while away")]
        await roamer.send("py-talker", "back")
        assert (await talker.recv(10)).data == "back"


async def test_tokens_are_checked_and_limits_told(tmp_path):
    from conftest import Node

    tokens = tmp_path / "tokens"
    tokens.write_text("py-secret peers=1\n")
    tokens.chmod(0o600)
    node = Node("--gateway-tokens", str(tokens))
    try:
        for token in (None, "wrong"):
            with pytest.raises(DistribusError) as e:
                await distribus_client.connect(node.url, token=token, reconnect=False)
            assert e.value.code == "unauthorized"
        async with distribus_client.connect(node.url, token="py-secret") as host:
            await host.create("only-one")
            with pytest.raises(DistribusError) as e:
                await host.create("two")
            assert e.value.code == "limit"
    finally:
        node.stop()


async def test_wss_with_a_certificate(tmp_path):
    import ssl
    import subprocess

    from conftest import Node

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    node = Node("--gateway-tls-cert", str(cert), "--gateway-tls-key", str(key))
    try:
        assert node.url.startswith("wss://")
        # Not trusted: refused.
        with pytest.raises(DistribusError) as e:
            await distribus_client.connect(node.url, reconnect=False)
        assert e.value.code == "unreachable"
        trusted = ssl.create_default_context(cafile=str(cert))
        async with distribus_client.connect(node.url, ssl=trusted) as host:
            p = await host.create("secure-p")
            q = await host.create("secure-q")
            await p.send("secure-q", {"over": "tls"})
            m = await q.recv(10)
            assert (m.sender, m.data) == ("secure-p", {"over": "tls"})
    finally:
        node.stop()
