"""For operators: ``GET /health`` (can speakd serve?) and ``GET /metrics`` (Prometheus).

Both are served without credentials: a monitoring system or Prometheus has no customer, and
neither shows anything of one (no session ids, no customer ids, no text). Like the rest of
the API they are only as reachable as ``[server] host`` and the host's firewall make them.

``/health`` is 200 when ARI is connected and the store takes a write, else 503 naming what
failed; the service answers it (:meth:`speakd.sessions.service.SpeakingService.health`, the
store check in :mod:`speakd.store.health`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from speakd.metrics import Metrics


async def health_response(service: Any) -> web.Response:
    body = await service.health()
    return web.json_response(body, status=503 if body["failed"] else 200)


def metrics_response(metrics: Metrics, request: web.Request) -> web.Response:
    body, content_type = metrics.exposition(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})
