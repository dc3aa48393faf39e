"""HTTP application: routes under /v1.0, credentials, and errors as JSON."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from speakd.api import schemas
from speakd.api.auth import Authenticator
from speakd.api.openapi import OPENAPI
from speakd.api.voices import PROVIDERS_KEY, list_voices
from speakd.errors import SpeakdError
from speakd.sessions.model import Speaking
from speakd.sessions.service import SpeakingService

log = structlog.get_logger(__name__)

SERVICE = web.AppKey("service", SpeakingService)
AUTH = web.AppKey("auth", Authenticator)
DEFAULT_PROVIDER = web.AppKey("default_provider", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = {"/health", "/v1.0/openapi.json"}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"status": status, "message": message}}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SpeakdError as exc:
        if exc.status >= 500:
            log.warning("request_failed", path=request.path, status=exc.status, error=exc.message)
        return _error(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {
            404: f"no such endpoint: {request.method} {request.path} (see /v1.0/openapi.json)",
            405: f"method {request.method} is not allowed on {request.path}",
        }.get(exc.status, exc.reason)
        return _error(exc.status, message)
    except Exception:
        log.exception("request_crashed", method=request.method, path=request.path)
        return _error(500, "internal error in speakd; the daemon log has the details")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in PUBLIC_PATHS:
        request["customer_id"] = request.app[AUTH].customer_for(request)
    return await handler(request)


def _record(record: Speaking, status: int = 200) -> web.Response:
    return web.json_response(record.to_dict(), status=status)


async def create_speaking(request: web.Request) -> web.Response:
    req = schemas.parse_create(await request.read(), request.app[DEFAULT_PROVIDER])
    record = await request.app[SERVICE].create(request["customer_id"], req)
    return _record(record, 201)


async def list_speakings(request: web.Request) -> web.Response:
    page_size, page_token = schemas.parse_page(request.query)
    records, next_token = await request.app[SERVICE].list(request["customer_id"], page_size, page_token)
    return web.json_response({"result": [r.to_dict() for r in records], "next_page_token": next_token})


async def get_speaking(request: web.Request) -> web.Response:
    return _record(await request.app[SERVICE].get(request["customer_id"], request.match_info["id"]))


async def say(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    # Existence and ownership first: a 404 is more useful than a complaint about the body.
    await service.get(request["customer_id"], request.match_info["id"])
    text, payload_type = schemas.parse_say(await request.read())
    record, item = await service.say(request["customer_id"], request.match_info["id"], text, payload_type)
    return web.json_response({**record.to_dict(), "say_id": item.say_id})


async def list_says(request: web.Request) -> web.Response:
    says = await request.app[SERVICE].says(request["customer_id"], request.match_info["id"])
    return web.json_response({"result": says})


async def flush(request: web.Request) -> web.Response:
    return _record(await request.app[SERVICE].flush(request["customer_id"], request.match_info["id"]))


async def stop(request: web.Request) -> web.Response:
    return _record(await request.app[SERVICE].stop(request["customer_id"], request.match_info["id"]))


async def delete_speaking(request: web.Request) -> web.Response:
    return _record(await request.app[SERVICE].delete(request["customer_id"], request.match_info["id"]))


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def health(request: web.Request) -> web.Response:
    """For systemd/monitoring: 200 when speakd can serve, 503 while Asterisk is unreachable."""
    service = request.app[SERVICE]
    connected = service.ari.connected.is_set()
    body = {"ari_connected": connected, "live_sessions": service.live_count, **service.media.health()}
    return web.json_response(body, status=200 if connected else 503)


def create_app(service: SpeakingService, authenticator: Authenticator, default_provider: str) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, auth_middleware], client_max_size=256 * 1024)
    app[SERVICE] = service
    app[AUTH] = authenticator
    app[DEFAULT_PROVIDER] = default_provider
    app[PROVIDERS_KEY] = service.providers
    app.router.add_post("/v1.0/speakings", create_speaking)
    app.router.add_get("/v1.0/speakings", list_speakings)
    app.router.add_get("/v1.0/speakings/{id}", get_speaking)
    app.router.add_delete("/v1.0/speakings/{id}", delete_speaking)
    app.router.add_post("/v1.0/speakings/{id}/say", say)
    app.router.add_get("/v1.0/speakings/{id}/says", list_says)
    app.router.add_post("/v1.0/speakings/{id}/flush", flush)
    app.router.add_post("/v1.0/speakings/{id}/stop", stop)
    app.router.add_get("/v1.0/voices", list_voices)
    app.router.add_get("/v1.0/openapi.json", openapi)
    app.router.add_get("/health", health)
    return app
