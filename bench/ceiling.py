"""The ceiling for any aiohttp proxy on one process: a bare aiohttp server that answers
every request with a constant ~1 KB chat completion. Usage: python bench/ceiling.py PORT"""

from __future__ import annotations

import sys

from aiohttp import web

from proxy.observe import new_event_loop  # the proxy's loop: uvloop when installed

BODY = (
    b'{"id":"chatcmpl-ceiling","object":"chat.completion","created":1,"model":"gpt-bench",'
    b'"system_fingerprint":"fp_bench","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"' + b"word " * 170 + b'","refusal":null},"logprobs":null,'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":170,'
    b'"total_tokens":179}}'
)


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
        loop=new_event_loop(),
    )


if __name__ == "__main__":
    main()
