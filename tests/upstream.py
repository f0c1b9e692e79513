"""A fake OpenAI server: a real aiohttp app on 127.0.0.1 that behaves like the API where it
matters to seedproxy. Output is a pure function of (messages, seed, temperature, fingerprint)
unless ``nondeterministic`` is on, or ``load_dependent`` is and requests overlap. Tests steer
it through attributes and ``script()``.

Run it alone with ``python -m tests.upstream --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import random
import re
import struct
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
]


KEPT = 10_000  # Responses API answers the fake server remembers for previous_response_id


def tokens(text: str) -> list[str]:
    """Text cut the way a tokenizer streams it: each word with its leading space."""
    return re.findall(r"\s*\S+|\s+", text)


def tool_call_deltas(index: int, call: dict[str, Any]) -> list[dict[str, Any]]:
    """A tool call as OpenAI streams it: opened with its id and name, then its arguments
    in three parts."""
    fn = call["function"]
    opened = {
        "index": index,
        "id": call["id"],
        "type": "function",
        "function": {"name": fn["name"], "arguments": ""},
    }
    args = fn["arguments"]
    third = max(1, len(args) // 3)
    return [{"tool_calls": [opened]}] + [
        {"tool_calls": [{"index": index, "function": {"arguments": args[k : k + third]}}]}
        for k in range(0, len(args), third)
    ]


def delta_event(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    """One choice's delta as a chunk's choice, with the logprobs of its token if any."""
    token_lp = delta.pop("_logprobs", None)
    return {
        "index": index,
        "delta": delta,
        "logprobs": {"content": [token_lp], "refusal": None} if token_lp else None,
        "finish_reason": None,
    }


@dataclass
class Scripted:
    """What the next call gets instead of a normal answer."""

    status: int = 500
    body: Any = None  # dict -> JSON, bytes -> raw, None -> an OpenAI-shaped error
    headers: dict[str, str] = field(default_factory=dict)
    stall: float = 0.0  # seconds to wait before answering
    drop: bool = False  # close the connection without answering
    midway: str | None = None  # "stall" | "drop": after the headers and half the body


@dataclass(eq=False)
class _Waiting:
    """A chat request in the load-dependent server: whether it shared the server."""

    joined: asyncio.Event = field(default_factory=asyncio.Event)
    overlapped: bool = False


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
        self.content_lines = 3  # lines of six words in each answer (about 40 bytes a line)
        self.nondeterministic = False
        # Like a batching server whose kernels are not batch-invariant: a chat answer is
        # deterministic when its request had the server alone, and its text changes from a
        # random word on when another request was in flight beside it. A request waits up
        # to ``batch_window`` seconds for company, as a scheduler gathers a batch.
        self.load_dependent = False
        self.batch_window = 0.2
        self._batch: set[_Waiting] = set()
        self.in_flight = 0  # chat requests being answered now, and the most ever at once
        self.max_in_flight = 0
        self.chunk_delay = 0.0  # seconds between streamed events
        self.stream_fault: str | None = None  # "drop" | "stall" | "no_done" | "error_event"
        self.fault_after = 2  # events sent before the fault
        self.extra_fields: dict[str, Any] = {}  # added to every message, e.g. reasoning_content
        self.reply: str | None = None  # the text every answer says, instead of random words
        # Text deltas and logprob tokens (Responses and chat) of these sizes in turn (a
        # secret split across events and tokens), instead of a word each
        self.delta_sizes: tuple[int, ...] = ()
        # Set to a threading.Event to hold answers until it is set (streams: after their
        # first event).
        self.gate: threading.Event | None = None
        self.stream_finished = threading.Event()  # set when a stream was written to the end
        self.scripts: deque[Scripted] = deque()
        self.fail_rate = 0.0  # fraction of calls answered with a 500
        self.failures = 0
        self.keep_calls = True  # False for load tests: only count them
        self.call_count = 0
        self.calls: list[Received] = []
        self.kept: dict[str, list[Any]] = {}  # Responses API: id -> the items up to it
        self.conversations: dict[str, list[Any]] = {}  # conversation id -> its items
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

    def completion(self, req: dict[str, Any], perturbed: bool = False) -> dict[str, Any]:
        """A chat completion that depends only on the request's output-relevant fields;
        ``perturbed``: the content's words from a random one on are drawn afresh."""
        basis = orjson.dumps(
            [req.get("messages"), req.get("seed"), req.get("temperature"), self.fingerprint],
            option=orjson.OPT_SORT_KEYS,
        )
        rng = (
            random.Random()
            if self.nondeterministic
            else random.Random(hashlib.sha256(basis).digest())
        )
        messages = req.get("messages") or []
        last = str(messages[-1].get("content", "")) if messages else ""
        tools = req.get("tools") or []
        choices = []
        completion_tokens = 0
        n = int(req.get("n") or 1)
        if not 1 <= n <= 128:  # the API's own bound; beyond it this loop would never end
            raise ValueError(f"n: {n} is out of range 1 to 128")
        for index in range(n):
            message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
            if "[refuse]" in last:
                message["refusal"] = "I can't help with that."
                finish = "stop"
            elif tools and req.get("tool_choice") != "none":
                name = tools[0].get("function", tools[0])["name"]  # chat or Responses shape
                args = orjson.dumps({"city": rng.choice(WORDS), "days": rng.randint(1, 9)})
                message["tool_calls"] = [
                    {
                        "id": f"call_{rng.randrange(16**8):08x}",
                        "type": "function",
                        "function": {"name": name, "arguments": args.decode()},
                    }
                ]
                finish = "tool_calls"
            else:
                words = [rng.choice(WORDS) for _ in range(6 * self.content_lines)]
                if perturbed:
                    fresh = random.Random()
                    start = fresh.randrange(len(words))
                    words[start:] = [fresh.choice(WORDS) for _ in words[start:]]
                lines = [" ".join(words[k : k + 6]) for k in range(0, len(words), 6)]
                message["content"] = self.reply if self.reply is not None else "\n".join(lines)
                finish = "stop"
            message.update(self.extra_fields)
            completion_tokens += 18
            logprobs = None
            if req.get("logprobs") and message["content"]:
                logprobs = {
                    "content": [
                        {
                            "token": t,
                            "logprob": -rng.random(),
                            "bytes": list(t.encode()),
                            "top_logprobs": [
                                {"token": t, "logprob": -0.5, "bytes": list(t.encode())}
                            ]
                            if req.get("top_logprobs")
                            else [],
                        }
                        for t in self.deltas(message["content"])
                    ],
                    "refusal": None,
                }
            choices.append(
                {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}
            )
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.get("model", "gpt-test"),
            "service_tier": "default",
            "system_fingerprint": self.fingerprint,
            **({"metadata": req["metadata"]} if "metadata" in req else {}),  # echoed as sent
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def chunks(self, completion: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
        """The completion as OpenAI streams it: choices interleaved, text a token at a time,
        tool calls opened with id and name, then their arguments in parts."""
        base = {
            k: completion[k]
            for k in ("id", "created", "model", "service_tier", "system_fingerprint")
        }
        base["object"] = "chat.completion.chunk"
        if include_usage:
            base["usage"] = None
        per_choice: list[list[dict[str, Any]]] = []
        for choice in completion["choices"]:
            msg = choice["message"]
            deltas: list[dict[str, Any]] = [{"role": "assistant", "content": "", "refusal": None}]
            lp = (choice["logprobs"] or {}).get("content") or []
            for key, value in self.extra_fields.items():
                if isinstance(value, str):
                    deltas += [{key: t} for t in tokens(value)]
                else:
                    deltas.append({key: value})
            for i, token in enumerate(self.deltas(msg["content"] or "")):
                deltas.append({"content": token, "_logprobs": lp[i] if lp else None})
            if msg["refusal"]:
                deltas += [{"refusal": t} for t in tokens(msg["refusal"])]
            for j, call in enumerate(msg.get("tool_calls") or []):
                deltas += tool_call_deltas(j, call)
            events = [delta_event(choice["index"], delta) for delta in deltas]
            events.append(
                {
                    "index": choice["index"],
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": choice["finish_reason"],
                }
            )
            per_choice.append(events)
        out = []
        for step in range(max(len(e) for e in per_choice)):
            for events in per_choice:
                if step < len(events):
                    out.append({**base, "choices": [events[step]]})
        if include_usage:
            out.append({**base, "choices": [], "usage": completion["usage"]})
        return out

    async def _stream(self, request: web.Request, events: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "x-request-id": uuid.uuid4().hex}
        )
        await response.prepare(request)
        if self.stream_fault == "no_done":  # the final event never comes
            events = [
                e
                for e in events
                if e != b"data: [DONE]\n\n" and b"event: response.completed" not in e
            ]
        for n, event in enumerate(events):
            if n == self.fault_after and self.stream_fault == "drop":
                assert request.transport is not None
                request.transport.abort()
                return response
            if n == self.fault_after and self.stream_fault == "stall":
                await asyncio.sleep(3600)
            if n == self.fault_after and self.stream_fault == "error_event":
                await response.write(
                    b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
                )
                await response.write_eof()
                return response
            await response.write(event)
            if n == 0 and self.gate is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await response.write_eof()
        self.stream_finished.set()
        return response

    async def _record(self, request: web.Request) -> Received:
        received = Received(
            request.method,
            request.path,
            request.rel_url.raw_query_string,
            dict(request.headers),
            await request.read(),
        )
        self.call_count += 1
        if self.keep_calls:
            self.calls.append(received)
        return received

    async def _scripted(self, request: web.Request, item: Scripted) -> web.StreamResponse:
        if self.gate is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
        if item.stall:
            await asyncio.sleep(item.stall)
        if item.drop:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if isinstance(item.body, bytes):
            body = item.body
        else:
            body = orjson.dumps(
                item.body
                if item.body is not None
                else {
                    "error": {
                        "message": f"scripted {item.status}",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
        if item.midway:
            response = web.StreamResponse(status=item.status, headers=item.headers)
            response.content_type = "application/json"
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            if item.midway == "stall":
                await asyncio.sleep(3600)
            assert request.transport is not None
            request.transport.abort()
            return response
        return web.Response(
            status=item.status, body=body, headers=item.headers, content_type="application/json"
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._chat(request)
        finally:
            self.in_flight -= 1

    async def _overlapped(self) -> bool:
        """Whether this request shared the server with another while it was scheduled."""
        me = _Waiting()
        if self._batch:
            for other in (*self._batch, me):
                other.overlapped = True
                other.joined.set()
        self._batch.add(me)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(me.joined.wait(), self.batch_window)
            return me.overlapped
        finally:
            self._batch.discard(me)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        if self.scripts:
            return await self._scripted(request, self.scripts.popleft())
        if self.latency:
            await asyncio.sleep(self.latency)
        req = received.json()
        completion = self.completion(req, self.load_dependent and await self._overlapped())
        if self.gate is not None and not req.get("stream"):
            await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
        if req.get("stream"):
            usage = (req.get("stream_options") or {}).get("include_usage") is True
            events = [b"data: " + orjson.dumps(c) + b"\n\n" for c in self.chunks(completion, usage)]
            return await self._stream(request, [*events, b"data: [DONE]\n\n"])
        return web.Response(
            body=orjson.dumps(completion),
            content_type="application/json",
            headers={"x-request-id": uuid.uuid4().hex},
        )

    async def azure_chat(self, request: web.Request) -> web.StreamResponse:
        """Azure OpenAI's deployment path: it wants ``api-version`` and an ``api-key``."""
        if "api-version" not in request.query:
            return web.json_response(
                {"error": {"code": "404", "message": "Resource not found"}}, status=404
            )
        if "api-key" not in request.headers:
            return web.json_response(
                {"error": {"code": "401", "message": "Access denied"}}, status=401
            )
        return await self.chat(request)

    async def legacy(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions: the chat answer's text as a ``text_completion``."""
        received = await self._record(request)
        if self.scripts:
            return await self._scripted(request, self.scripts.popleft())
        req = received.json()
        chat = self.completion(
            {**req, "messages": [{"role": "user", "content": str(req.get("prompt"))}]}
        )
        choices = [
            {
                "index": c["index"],
                "text": c["message"]["content"] or "",
                "logprobs": None,
                "finish_reason": c["finish_reason"],
            }
            for c in chat["choices"]
        ]
        answer = {**chat, "object": "text_completion", "choices": choices}
        if not req.get("stream"):
            return web.json_response(answer)
        base = {k: answer[k] for k in ("id", "object", "created", "model", "system_fingerprint")}
        events = []
        for c in choices:
            for token in tokens(c["text"]):
                events.append(
                    {
                        **base,
                        "choices": [
                            {
                                "index": c["index"],
                                "text": token,
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    }
                )
            events.append(
                {
                    **base,
                    "choices": [
                        {
                            "index": c["index"],
                            "text": "",
                            "logprobs": None,
                            "finish_reason": c["finish_reason"],
                        }
                    ],
                }
            )
        if (req.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "choices": [], "usage": answer["usage"]})
        raw = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events]
        return await self._stream(request, [*raw, b"data: [DONE]\n\n"])

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        if self.scripts:
            return await self._scripted(request, self.scripts.popleft())
        req = received.json()
        inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
        data = []
        for i, text in enumerate(inputs):
            rng = random.Random(hashlib.sha256(orjson.dumps(text)).digest())
            vector = [rng.uniform(-1, 1) for _ in range(8)]
            if self.nondeterministic:
                vector = [x + random.uniform(-1e-3, 1e-3) for x in vector]
            if req.get("encoding_format") == "base64":
                embedding: Any = base64.b64encode(struct.pack("<8f", *vector)).decode()
            else:
                embedding = vector
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": req["model"],
                "usage": {"prompt_tokens": len(inputs) * 3, "total_tokens": len(inputs) * 3},
            }
        )

    def history(self, req: dict[str, Any]) -> list[Any]:
        """What the server holds for the request: the items up to the response named by
        ``previous_response_id``, or those of the ``conversation`` (made on first use here;
        the API wants it created first)."""
        previous = req.get("previous_response_id")
        if previous is not None:
            return self.kept[previous]
        conversation = req.get("conversation")
        if isinstance(conversation, dict):
            conversation = conversation["id"]
        return self.conversations.get(conversation, []) if conversation is not None else []

    def response(self, req: dict[str, Any]) -> dict[str, Any]:
        """A Responses API answer built from the chat answer to the input after what the
        server holds for it (:meth:`history`); kept, as the API keeps it, under its id
        (random, as the API's are) and in its conversation. After a function call's
        output the answer is text, so a tool loop ends."""
        text_input = req.get("input")
        items = (
            [{"role": "user", "content": text_input}] if isinstance(text_input, str) else text_input
        )
        messages = [*self.history(req), *(items or [])]
        answered = bool(messages) and messages[-1].get("type") == "function_call_output"
        logprobs = "message.output_text.logprobs" in (req.get("include") or [])
        chat = self.completion(
            {**req, "messages": messages, "n": 1, "logprobs": logprobs}
            | ({"tools": []} if answered else {})
        )
        message = chat["choices"][0]["message"]
        tokens_lp = (chat["choices"][0]["logprobs"] or {}).get("content") or []
        rid = f"resp_{uuid.uuid4().hex[:16]}"
        if message.get("tool_calls"):
            call = message["tool_calls"][0]
            output = [
                {
                    "type": "function_call",
                    "id": f"fc_{uuid.uuid4().hex[:8]}",
                    "call_id": call["id"],
                    "name": call["function"]["name"],
                    "arguments": call["function"]["arguments"],
                    "status": "completed",
                }
            ]
        else:
            output = [
                {
                    "type": "message",
                    "id": f"msg_{uuid.uuid4().hex[:8]}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [
                        {
                            "type": "output_text",
                            "text": message["content"] or "",
                            "annotations": [],
                            "logprobs": tokens_lp,
                        }
                    ],
                }
            ]
        self.kept[rid] = [*messages, *output]
        if len(self.kept) > KEPT:  # the oldest first, so load tests stay bounded
            del self.kept[next(iter(self.kept))]
        conversation = req.get("conversation")
        if conversation is not None:
            name = conversation["id"] if isinstance(conversation, dict) else conversation
            self.conversations[name] = self.kept[rid]
        # the request fields a Response repeats as the API does (its defaults when not sent)
        echoed = {"user": None, "metadata": {}, "store": True}
        for name in ("prompt_cache_key", "safety_identifier", *echoed):
            if name in req:
                echoed[name] = req[name]
        return {
            **echoed,
            "id": rid,
            "object": "response",
            "previous_response_id": req.get("previous_response_id"),
            "created_at": chat["created"],
            "status": "completed",
            "model": chat["model"],
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": chat["usage"]["prompt_tokens"],
                "output_tokens": chat["usage"]["completion_tokens"],
                "total_tokens": chat["usage"]["total_tokens"],
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }

    def deltas(self, text: str) -> list[str]:
        """A Responses stream's text deltas: a word each, or pieces of ``delta_sizes``."""
        if not self.delta_sizes:
            return tokens(text)
        out, at = [], 0
        while at < len(text):
            size = self.delta_sizes[len(out) % len(self.delta_sizes)]
            out.append(text[at : at + size])
            at += size
        return out

    async def responses(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        if self.scripts:
            return await self._scripted(request, self.scripts.popleft())
        req = received.json()
        previous = req.get("previous_response_id")
        if previous is not None and previous not in self.kept:
            return web.json_response(
                {
                    "error": {
                        "message": f"Previous response with id '{previous}' not found.",
                        "type": "invalid_request_error",
                        "param": "previous_response_id",
                        "code": "previous_response_not_found",
                    }
                },
                status=400,
            )
        answer = self.response(req)
        if not req.get("stream"):
            if self.gate is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
            return web.json_response(answer)
        seq = iter(range(10**6))

        def event(kind: str, **fields: Any) -> bytes:
            payload = {"type": kind, "sequence_number": next(seq), **fields}
            return f"event: {kind}\n".encode() + b"data: " + orjson.dumps(payload) + b"\n\n"

        opening = {**answer, "status": "in_progress", "output": []}
        events = [
            event("response.created", response=opening),
            event("response.in_progress", response=opening),
        ]
        for oi, item in enumerate(answer["output"]):
            if item["type"] == "message":
                text = item["content"][0]["text"]
                lp = item["content"][0]["logprobs"]
                where = {"item_id": item["id"], "output_index": oi, "content_index": 0}
                events += [
                    event(
                        "response.output_item.added",
                        output_index=oi,
                        item={**item, "status": "in_progress", "content": []},
                    ),
                    event(
                        "response.content_part.added",
                        **where,
                        part={"type": "output_text", "text": "", "annotations": []},
                    ),
                    *[
                        event(
                            "response.output_text.delta",
                            **where,
                            delta=t,
                            logprobs=lp[i : i + 1],
                        )
                        for i, t in enumerate(self.deltas(text))
                    ],
                    event("response.output_text.done", **where, text=text, logprobs=lp),
                    event("response.content_part.done", **where, part=item["content"][0]),
                ]
            else:
                events += [
                    event(
                        "response.output_item.added",
                        output_index=oi,
                        item={**item, "arguments": "", "status": "in_progress"},
                    ),
                    event(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=oi,
                        delta=item["arguments"],
                    ),
                    event(
                        "response.function_call_arguments.done",
                        item_id=item["id"],
                        output_index=oi,
                        arguments=item["arguments"],
                    ),
                ]
            events.append(event("response.output_item.done", output_index=oi, item=item))
        events.append(event("response.completed", response=answer))
        return await self._stream(request, events)

    async def echo(self, request: web.Request) -> web.StreamResponse:
        """Any other path: answers what it received, so pass-through can be checked."""
        received = await self._record(request)
        if self.scripts:
            return await self._scripted(request, self.scripts.popleft())
        if request.path.endswith("/models"):
            return web.json_response(
                {
                    "object": "list",
                    "data": [
                        {"id": "gpt-test", "object": "model", "created": 0, "owned_by": "fake"}
                    ],
                }
            )
        return web.json_response(
            {
                "method": received.method,
                "path": received.path,
                "query": received.query,
                "headers": received.headers,
                "body": received.body.decode("latin-1"),
            },
            headers={"X-Upstream": "fake", "Set-Cookie": "a=b"},
        )

    @web.middleware
    async def _robust(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Like the real API: a request it cannot make sense of is a 400, not a crash; and
        ``fail_rate`` of the calls fail with a 500."""
        if self.fail_rate and random.random() < self.fail_rate:
            await request.read()
            self.failures += 1
            return web.json_response(
                {
                    "error": {
                        "message": "random failure",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
                status=500,
            )
        try:
            return await handler(request)
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            IndexError,
            orjson.JSONDecodeError,
        ) as exc:
            return web.json_response(
                {
                    "error": {
                        "message": f"invalid request: {exc!r}",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
                status=400,
            )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3, middlewares=[self._robust])
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.legacy)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.azure_chat)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    async def start(self, port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
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
    parser.add_argument("--nondeterministic", action="store_true")
    parser.add_argument("--load-dependent", action="store_true")
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--content-lines", type=int, default=3)
    args = parser.parse_args()
    fake = FakeUpstream()
    fake.fingerprint, fake.latency = args.fingerprint, args.latency
    fake.nondeterministic, fake.fail_rate = args.nondeterministic, args.fail_rate
    fake.load_dependent = args.load_dependent
    fake.content_lines = args.content_lines
    fake.keep_calls = False
    from proxy.observe import new_event_loop  # the same loop as the proxy's, for benchmarks

    web.run_app(
        fake.app(),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=new_event_loop(),
    )


if __name__ == "__main__":
    main()
