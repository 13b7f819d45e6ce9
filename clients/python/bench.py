"""Throughput and round trip from Python through the gateways of two
distribus-node processes (as clients/js/test/bench.mjs does from Node.js).

    python3 bench.py [N=20000] [RTT=2000]
"""

import asyncio
import statistics
import sys
import time

sys.path.insert(0, "tests")
from conftest import Node  # noqa: E402

import distribus_client  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
RTT = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
PAYLOAD64 = "x" * 62


async def main():
    a = Node("--inbox-capacity", "65536")
    b = Node("--join", a.addr, "--inbox-capacity", "65536")
    try:
        async with distribus_client.connect(a.url) as ha, distribus_client.connect(b.url) as hb:
            sender = await ha.create("bench-a")
            sink = await hb.create("bench-sink")
            echo = await hb.create("bench-echo")
            while True:
                try:
                    if (await ha.find("bench-sink"))["host"] == hb.id:
                        break
                except distribus_client.DistribusError:
                    await asyncio.sleep(0.05)

            async def echoer():
                async for m in echo:
                    await echo.send(m.sender, m.data)

            echo_task = asyncio.create_task(echoer())

            async def drain(n):
                for _ in range(n):
                    await sink.recv(30)

            await asyncio.gather(*(sender.send("bench-sink", PAYLOAD64) for _ in range(1000)))
            await drain(1000)

            t0 = time.perf_counter()
            await asyncio.gather(*(sender.send("bench-sink", PAYLOAD64) for _ in range(N)), drain(N))
            fired = N / (time.perf_counter() - t0)

            rtts = []
            for i in range(200 + RTT):
                s = time.perf_counter()
                await sender.send("bench-echo", PAYLOAD64)
                await sender.recv(10)
                if i >= 200:
                    rtts.append((time.perf_counter() - s) * 1e6)
            rtts.sort()
            echo_task.cancel()
            print(f"distribus_client (Python {sys.version.split()[0]}), 64 B, N={N}")
            print(f"  fired at once, acknowledged      {fired:9.0f} msg/s")
            print(f"  round trip p50                   {statistics.median(rtts):9.0f} µs")
            print(f"  round trip p99                   {rtts[int(0.99 * (len(rtts) - 1))]:9.0f} µs")
    finally:
        a.stop()
        b.stop()


asyncio.run(main())
