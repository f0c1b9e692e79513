"""The floor for a miss through any aiohttp caching proxy: a bare aiohttp server that reads
the request, looks its hash up in diskcache, forwards it with one ClientSession, stores the
answer before answering, and answers. No seed, policy, headers, registry or logs.

    python bench/floor.py PORT UPSTREAM_URL CACHE_DIR
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import AsyncIterator

import aiohttp
import diskcache
from aiohttp import web

from proxy.observe import new_event_loop  # the proxy's loop: uvloop when installed

SESSION = web.AppKey("session", aiohttp.ClientSession)
CACHE = web.AppKey("cache", diskcache.Cache)
UPSTREAM = web.AppKey("upstream", str)


async def _session(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(auto_decompress=False)
    yield
    await app[SESSION].close()


async def chat(request: web.Request) -> web.Response:
    body = await request.read()
    key = hashlib.sha256(body).hexdigest()
    cache = request.app[CACHE]
    stored = cache.get(key)
    if stored is not None:
        return web.Response(body=stored, content_type="application/json")
    async with request.app[SESSION].post(
        request.app[UPSTREAM], data=body, headers={"Content-Type": "application/json"}
    ) as answer:
        status, data = answer.status, await answer.read()
    if status == 200:
        cache.set(key, data)
    return web.Response(status=status, body=data, content_type="application/json")


def main() -> None:
    port, upstream, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    app = web.Application()
    # its cheapest settings: no checkpoints and no eviction in the writes
    app[CACHE] = diskcache.Cache(directory, sqlite_wal_autocheckpoint=0, cull_limit=0)
    app[UPSTREAM] = upstream
    app.cleanup_ctx.append(_session)
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=None, loop=new_event_loop()
    )


if __name__ == "__main__":
    main()
