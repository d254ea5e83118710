"""The stable model name in front of vLLM: a small reverse proxy that nightlora runs.

vLLM serves each LoRA under the name it was loaded with and has no alias for one
(``--served-model-name`` names only the base model; a LoRA resolver plugin is asked
only for names that are not loaded, once, and must run inside vLLM's own process).
So the app talks to this proxy: a request for the stable name (``hanni``) has its
``model`` replaced by the live version's name from the route file (route.py) and goes
on to vLLM; everything else, streams included, passes through byte for byte.

It counts requests in flight per upstream model, so the switch can wait until the
version it retires has finished every request before unloading it (unloading under
running generations has crashed vLLM: vllm#13698), and it reports those counts on
``GET /nightlora/proxy``.

Run: ``python -m nightlora.targets.vllm.proxy --host H --port P --upstream URL --route FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from aiohttp.client_exceptions import ClientError

from nightlora.targets.vllm.route import MODEL_PATHS, RouteFile, rewrite

STATUS_PATH = "/nightlora/proxy"
# Hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp sets itself for the re-sent body.
_DROP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                   "transfer-encoding", "upgrade", "host", "content-length", "content-encoding"})


def _headers(h: Any) -> dict[str, str]:
    return {k: v for k, v in h.items() if k.lower() not in _DROP}


class Proxy:
    def __init__(self, upstream: str, route_file: Path):
        self.upstream = upstream.rstrip("/")
        self.routes = RouteFile(route_file)
        self.inflight: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.failed = 0
        self.session: ClientSession | None = None

    async def start(self, _: web.Application) -> None:
        # No timeout on a whole request: a long generation is not an error; connecting is bounded.
        self.session = ClientSession(timeout=ClientTimeout(total=None, sock_connect=10), trust_env=False,
                                     connector=TCPConnector(limit=0), auto_decompress=False)

    async def close(self, _: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.close)
        app.router.add_get(STATUS_PATH, self.status)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        return app

    async def status(self, _: web.Request) -> web.Response:
        route = self.routes.get()
        return web.json_response({
            "route": None if route is None else {"stable": route.stable, "base": route.base, "live": route.live},
            "inflight": {k: v for k, v in self.inflight.items() if v},
            "served": dict(self.served),
            "failed": self.failed,
        })

    async def forward(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        raw = await request.read()
        model: str | None = None
        if request.method == "POST" and request.path in MODEL_PATHS and raw:
            route = self.routes.get()
            try:
                body = json.loads(raw)
            except ValueError:
                body = None  # not JSON: vLLM says what is wrong with it
            if route is None and isinstance(body, dict) and body.get("model") is not None:
                pass  # nothing deployed yet: vLLM answers for whatever name was asked
            elif route is not None:
                body, model = rewrite(body, route)
                if model is not None:
                    raw = json.dumps(body).encode()
        if request.method == "GET" and request.path == "/v1/models":
            return await self._models(request)
        if model is not None:
            self.inflight[model] += 1
        try:
            return await self._send(request, raw, model)
        finally:
            if model is not None:
                self.inflight[model] -= 1

    async def _send(self, request: web.Request, raw: bytes, model: str | None) -> web.StreamResponse:
        assert self.session is not None
        url = self.upstream + request.rel_url.path_qs
        try:
            async with self.session.request(request.method, url, data=raw or None,
                                            headers=_headers(request.headers)) as up:
                out = web.StreamResponse(status=up.status, headers=_headers(up.headers))
                await out.prepare(request)
                async for chunk in up.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                if model is not None:
                    self.served[model] += 1
                return out
        except (ClientError, asyncio.TimeoutError) as e:
            self.failed += 1
            return web.json_response({"error": {"message": f"vLLM at {self.upstream} did not answer: "
                                                           f"{type(e).__name__}: {e}", "code": 502}}, status=502)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        """vLLM's list, with the stable name added so an app that checks the list finds it."""
        assert self.session is not None
        try:
            async with self.session.get(self.upstream + "/v1/models") as up:
                body = await up.read()
                status = up.status
        except (ClientError, asyncio.TimeoutError) as e:
            return web.json_response({"error": {"message": f"vLLM did not answer: {e}", "code": 502}}, status=502)
        route = self.routes.get()
        try:
            listing = json.loads(body)
        except ValueError:
            listing = None
        if status == 200 and route is not None and isinstance(listing, dict) and isinstance(listing.get("data"), list):
            listing["data"].append({"id": route.stable, "object": "model", "owned_by": "nightlora",
                                    "root": route.upstream_model, "parent": route.base})
            return web.json_response(listing)
        return web.Response(body=body, status=status, content_type="application/json")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="nightlora.targets.vllm.proxy", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="vLLM's base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--route", type=Path, required=True, help="the route file nightlora writes")
    a = p.parse_args(argv)
    # handle_signals: SIGTERM (our stop) and SIGINT end it cleanly.
    web.run_app(Proxy(a.upstream, a.route).app(), host=a.host, port=a.port, print=None,
                access_log=None, handle_signals=True)


if __name__ == "__main__":
    main()
