"""A fake OpenAI server: a real aiohttp app on 127.0.0.1 that behaves like the API where it
matters to seedproxy. Output is a pure function of (messages, seed, temperature, fingerprint)
unless ``nondeterministic`` is on. Tests steer it through attributes and ``script()``.

Run it alone with ``python -m tests.upstream --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

WORDS = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
]


@dataclass
class Scripted:
    """What the next call gets instead of a normal answer."""

    status: int = 500
    body: Any = None  # dict -> JSON, bytes -> raw, None -> an OpenAI-shaped error
    headers: dict[str, str] = field(default_factory=dict)
    stall: float = 0.0  # seconds to wait before answering
    drop: bool = False  # close the connection without answering


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class FakeUpstream:
    def __init__(self) -> None:
        self.fingerprint: str | None = "fp_one"
        self.latency = 0.0
        self.nondeterministic = False
        self.scripts: deque[Scripted] = deque()
        self.calls: list[Received] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- knobs ------------------------------------------------------------------------------

    def script(self, *items: Scripted) -> None:
        self.scripts.extend(items)

    @property
    def chat_calls(self) -> list[Received]:
        return [c for c in self.calls if c.path.endswith("/chat/completions")]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- behaviour --------------------------------------------------------------------------

    def completion(self, req: dict[str, Any]) -> dict[str, Any]:
        """A chat completion that depends only on the request's output-relevant fields."""
        basis = orjson.dumps([req.get("messages"), req.get("seed"), req.get("temperature"),
                              self.fingerprint], option=orjson.OPT_SORT_KEYS)
        rng = (random.Random() if self.nondeterministic
               else random.Random(hashlib.sha256(basis).digest()))
        messages = req.get("messages") or []
        last = str(messages[-1].get("content", "")) if messages else ""
        tools = req.get("tools") or []
        choices = []
        completion_tokens = 0
        for index in range(int(req.get("n") or 1)):
            message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
            if "[refuse]" in last:
                message["refusal"] = "I can't help with that."
                finish = "stop"
            elif tools and req.get("tool_choice") != "none":
                name = tools[0]["function"]["name"]
                args = orjson.dumps({"city": rng.choice(WORDS), "days": rng.randint(1, 9)})
                message["tool_calls"] = [{"id": f"call_{rng.randrange(16**8):08x}",
                                          "type": "function",
                                          "function": {"name": name, "arguments": args.decode()}}]
                finish = "tool_calls"
            else:
                lines = [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(3)]
                message["content"] = "\n".join(lines)
                finish = "stop"
            completion_tokens += 18
            choices.append({"index": index, "message": message, "logprobs": None,
                            "finish_reason": finish})
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.get("model", "gpt-test"),
            "system_fingerprint": self.fingerprint,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    async def _record(self, request: web.Request) -> Received:
        received = Received(request.method, request.path, request.rel_url.raw_query_string,
                            dict(request.headers), await request.read())
        self.calls.append(received)
        return received

    async def _scripted(self, request: web.Request, item: Scripted) -> web.StreamResponse:
        if item.stall:
            await asyncio.sleep(item.stall)
        if item.drop:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if isinstance(item.body, bytes):
            body = item.body
        else:
            body = orjson.dumps(item.body if item.body is not None else {"error": {
                "message": f"scripted {item.status}", "type": "server_error", "param": None,
                "code": None}})
        return web.Response(status=item.status, body=body, headers=item.headers,
                            content_type="application/json")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        if self.scripts:
            return await self._scripted(request, self.scripts.popleft())
        if self.latency:
            await asyncio.sleep(self.latency)
        req = received.json()
        return web.Response(body=orjson.dumps(self.completion(req)),
                            content_type="application/json",
                            headers={"x-request-id": uuid.uuid4().hex})

    async def echo(self, request: web.Request) -> web.StreamResponse:
        """Any other path: answers what it received, so pass-through can be checked."""
        received = await self._record(request)
        if self.scripts:
            return await self._scripted(request, self.scripts.popleft())
        if request.path.endswith("/models"):
            return web.json_response({"object": "list", "data": [
                {"id": "gpt-test", "object": "model", "created": 0, "owned_by": "fake"}]})
        return web.json_response({
            "method": received.method, "path": received.path, "query": received.query,
            "headers": received.headers, "body": received.body.decode("latin-1"),
        }, headers={"X-Upstream": "fake", "Set-Cookie": "a=b"})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    async def start(self, port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--fingerprint", default="fp_one")
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    fake = FakeUpstream()
    fake.fingerprint, fake.latency = args.fingerprint, args.latency
    web.run_app(fake.app(), host="127.0.0.1", port=args.port, access_log=None)


if __name__ == "__main__":
    main()
