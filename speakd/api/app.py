"""HTTP application: routes under /v1.0, credentials, request ids, and errors as JSON."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from speakd.api import events_ws, lexicons, schemas, stream_ws
from speakd.api.auth import Authenticator
from speakd.api.carry import NO_SUCH_REFERENCE, STREAM_ERROR, Carrier, is_carried
from speakd.api.events_ws import EventHub
from speakd.api.openapi import OPENAPI
from speakd.api.ops import health_response, metrics_response
from speakd.api.prompts import prompt_response
from speakd.api.voices import voices_response
from speakd.errors import INTERNAL_ERROR, NotFound, SpeakdError
from speakd.metrics import Metrics
from speakd.sessions.nodes import NodeRegistry
from speakd.sessions.peers import NoSuchReference, OwnedElsewhere
from speakd.sessions.prompts import PromptRenderer
from speakd.sessions.service import SpeakingService
from speakd.store.records import Speaking

log = structlog.get_logger(__name__)

SERVICE = web.AppKey("service", SpeakingService)
EVENTS = web.AppKey("events", EventHub)
AUTH = web.AppKey("auth", Authenticator)
DEFAULT_PROVIDER = web.AppKey("default_provider", str)
METRICS = web.AppKey("metrics", Metrics)
NODES = web.AppKey("nodes", NodeRegistry)
CARRIER = web.AppKey("carrier", Carrier)
PROMPTS = web.AppKey("prompts", PromptRenderer)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# For monitoring (see speakd.api.ops for why they take no credentials), and the API's own document.
PUBLIC_PATHS = {"/health", "/metrics", "/v1.0/openapi.json"}


# The text stream's route: a request for it is carried as a WebSocket.
STREAM = "/v1.0/speakings/{id}/stream"

REQUEST_ID = web.RequestKey("request_id", str)
CUSTOMER_ID = web.RequestKey("customer_id", str)
REQUEST_ID_HEADER = "X-Request-Id"

# Reasons for the errors aiohttp itself raises (routing, body size); anything else is http_<status>.
HTTP_REASONS = {
    400: "invalid_request",
    404: "no_such_endpoint",
    405: "method_not_allowed",
    413: "body_too_large",
}


def _error(
    request: web.Request, status: int, message: str, reason: str, retry_after: int | None = None
) -> web.Response:
    """The error envelope: ``{"error": {"status", "message", "reason", "request_id"}}``."""
    body = {"status": status, "message": message, "reason": reason, "request_id": request.get(REQUEST_ID, "")}
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if is_carried(request) and request.headers.get("Upgrade", "").lower() == "websocket":
        headers[STREAM_ERROR] = json.dumps(body)  # see speakd.api.carry: the carrier's client drops the body
    return web.json_response({"error": body}, status=status, headers=headers)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id: in error bodies, in the X-Request-Id header of every response
    (set in `_send_request_id`), and in every log line written while the request runs."""
    request_id = str(uuid.uuid4())
    if is_carried(request):  # the carrying node's id: one request, one id on both nodes
        request_id = _carried_request_id(request.headers.get(REQUEST_ID_HEADER, "")) or request_id
    request[REQUEST_ID] = request_id
    # Tasks the request starts (a session's setup and playout) copy this context, so their
    # log lines carry the id of the request that started them.
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        return await handler(request)


def _carried_request_id(value: str) -> str:
    return value if 0 < len(value) <= 64 and value.isascii() and value.isprintable() else ""


async def _send_request_id(request: web.Request, response: web.StreamResponse) -> None:
    # on_response_prepare sees every response, also an HTTPException (a redirect) passed through.
    if REQUEST_ID not in request:
        request[REQUEST_ID] = str(uuid.uuid4())
    response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SpeakdError as exc:
        log_at = log.warning if exc.status >= 500 else log.info
        log_at(
            "request_failed" if exc.status >= 500 else "request_refused",
            method=request.method,
            path=request.path,
            status=exc.status,
            reason=exc.reason,
            error=exc.message,
        )
        return _error(request, exc.status, exc.message, exc.reason, exc.retry_after)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {
            404: f"no such endpoint: {request.method} {request.path} (see /v1.0/openapi.json)",
            405: f"method {request.method} is not allowed on {request.path}",
        }.get(exc.status, exc.reason)
        reason = HTTP_REASONS.get(exc.status, f"http_{exc.status}")
        log.info("request_refused", method=request.method, path=request.path, status=exc.status, reason=reason)
        response = _error(request, exc.status, message, reason)
        if "Allow" in exc.headers:  # a 405 names the methods that are allowed
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("request_crashed", method=request.method, path=request.path)
        return _error(request, SpeakdError.status, INTERNAL_ERROR, SpeakdError.reason)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in PUBLIC_PATHS:
        request[CUSTOMER_ID] = request.app[AUTH].customer_for(request)
    return await handler(request)


@web.middleware
async def carry_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request about a session (or call) of another node, carried there and answered with its
    answer (speakd.api.carry); one already carried here is answered here."""
    try:
        return await handler(request)
    except OwnedElsewhere as where:
        if is_carried(request) or CARRIER not in request.app:
            raise  # a 503 naming the node
        carrier = request.app[CARRIER]
        log.debug("request_carried", node=where.node.id, method=request.method, path=request.path)
        if request.match_info.route.resource is not None and request.match_info.route.resource.canonical == STREAM:
            return await carrier.stream(request, where, request[REQUEST_ID])
        return await carrier.forward(request, where, request[REQUEST_ID])
    except NoSuchReference as missing:
        if is_carried(request):  # between nodes: "not here", not the client's 400
            raise NotFound(missing.message, reason=NO_SUCH_REFERENCE) from None
        if not missing.rounds or CARRIER not in request.app:
            raise
        return await request.app[CARRIER].search(request, missing, request[REQUEST_ID])


def _record(record: Speaking, status: int = 200) -> web.Response:
    return web.json_response(record.to_dict(), status=status)


async def create_speaking(request: web.Request) -> web.Response:
    req = schemas.parse_create(await request.read(), request.app[DEFAULT_PROVIDER])
    record = await request.app[SERVICE].create(request[CUSTOMER_ID], req, route=not is_carried(request))
    return _record(record, 201)


async def list_speakings(request: web.Request) -> web.Response:
    page_size, page_token = schemas.parse_page(request.query)
    records, next_token = await request.app[SERVICE].list(request[CUSTOMER_ID], page_size, page_token)
    return web.json_response({"result": [r.to_dict() for r in records], "next_page_token": next_token})


async def get_speaking(request: web.Request) -> web.Response:
    return _record(await request.app[SERVICE].get(request[CUSTOMER_ID], request.match_info["id"]))


async def say(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    # Existence and ownership first: a 404 is more useful than a complaint about the body.
    await service.here(request[CUSTOMER_ID], request.match_info["id"])  # carried before the body is read
    say_request = schemas.parse_say(await request.read())
    record, item = await service.say(request[CUSTOMER_ID], request.match_info["id"], say_request)
    return web.json_response({**record.to_dict(), "say_id": item.say_id})


async def list_says(request: web.Request) -> web.Response:
    says = await request.app[SERVICE].says(request[CUSTOMER_ID], request.match_info["id"])
    return web.json_response({"result": says})


async def flush(request: web.Request) -> web.Response:
    record, protected = await request.app[SERVICE].flush(request[CUSTOMER_ID], request.match_info["id"])
    return web.json_response({**record.to_dict(), "protected_says": protected})


async def stop(request: web.Request) -> web.Response:
    return _record(await request.app[SERVICE].stop(request[CUSTOMER_ID], request.match_info["id"]))


async def delete_speaking(request: web.Request) -> web.Response:
    return _record(await request.app[SERVICE].delete(request[CUSTOMER_ID], request.match_info["id"]))


async def stream(request: web.Request) -> web.WebSocketResponse:
    timestamps, cache = schemas.parse_stream_query(request.query)
    return await stream_ws.serve(
        request, request.app[SERVICE], request[CUSTOMER_ID], request.match_info["id"], timestamps, cache
    )


async def events(request: web.Request) -> web.WebSocketResponse:
    return await events_ws.serve(request, request.app[EVENTS], request[CUSTOMER_ID])


async def list_nodes(request: web.Request) -> web.Response:
    """The nodes sharing this speakd's store (any customer's credential: an operators' view)."""
    return web.json_response({"result": await request.app[NODES].nodes()})


async def render_prompt(request: web.Request) -> web.Response:
    if PROMPTS not in request.app:
        raise NotFound("this speakd renders no prompts")
    return await prompt_response(
        request.app[PROMPTS], request[CUSTOMER_ID], await request.read(), request.app[DEFAULT_PROVIDER]
    )


async def put_lexicon(request: web.Request) -> web.Response:
    book, name = request.app[SERVICE].lexicons, request.match_info["name"]
    return await lexicons.put_response(book, request[CUSTOMER_ID], name, await request.read())


async def get_lexicon(request: web.Request) -> web.Response:
    book, name = request.app[SERVICE].lexicons, request.match_info["name"]
    return await lexicons.get_response(book, request[CUSTOMER_ID], name)


async def delete_lexicon(request: web.Request) -> web.Response:
    book, name = request.app[SERVICE].lexicons, request.match_info["name"]
    return await lexicons.delete_response(book, request[CUSTOMER_ID], name)


async def list_lexicons(request: web.Request) -> web.Response:
    return await lexicons.list_response(request.app[SERVICE].lexicons, request[CUSTOMER_ID])


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def list_voices(request: web.Request) -> web.Response:
    return await voices_response(request.app[SERVICE], request.query)


async def health(request: web.Request) -> web.Response:
    """For systemd/monitoring: 200 when speakd can serve, 503 naming what fails (ARI, the store)."""
    return await health_response(request.app[SERVICE])


async def serve_metrics(request: web.Request) -> web.Response:
    return metrics_response(request.app[METRICS], request)


def create_app(
    service: SpeakingService,
    authenticator: Authenticator,
    default_provider: str,
    hub: EventHub | None = None,
    metrics: Metrics | None = None,
    nodes: NodeRegistry | None = None,
    carrier: Carrier | None = None,
    prompts: PromptRenderer | None = None,
) -> web.Application:
    """``nodes``: the daemon's registry (GET /v1.0/nodes needs it; apps made for tests may go without);
    ``carrier``: the daemon's, for requests about other nodes' sessions (without: a 503 naming the node);
    ``prompts``: what POST /v1.0/prompts renders with (without: 404)."""
    app = web.Application(
        middlewares=[request_id_middleware, errors_middleware, auth_middleware, carry_middleware],
        client_max_size=256 * 1024,
    )
    app.on_response_prepare.append(_send_request_id)
    app[SERVICE] = service
    app[EVENTS] = hub if hub is not None else EventHub()
    app[AUTH] = authenticator
    app[DEFAULT_PROVIDER] = default_provider
    app[METRICS] = metrics if metrics is not None else Metrics()
    if nodes is not None:
        app[NODES] = nodes
    if carrier is not None:
        app[CARRIER] = carrier
    if prompts is not None:
        app[PROMPTS] = prompts
    app.router.add_post("/v1.0/speakings", create_speaking)
    app.router.add_get("/v1.0/speakings", list_speakings)
    app.router.add_get("/v1.0/speakings/{id}", get_speaking)
    app.router.add_delete("/v1.0/speakings/{id}", delete_speaking)
    app.router.add_post("/v1.0/speakings/{id}/say", say)
    app.router.add_get("/v1.0/speakings/{id}/says", list_says)
    app.router.add_post("/v1.0/speakings/{id}/flush", flush)
    app.router.add_post("/v1.0/speakings/{id}/stop", stop)
    app.router.add_get("/v1.0/ws", events)
    app.router.add_get(STREAM, stream)
    app.router.add_get("/v1.0/voices", list_voices)
    app.router.add_post("/v1.0/prompts", render_prompt)
    app.router.add_get("/v1.0/nodes", list_nodes)
    app.router.add_get("/v1.0/lexicons", list_lexicons)
    app.router.add_put("/v1.0/lexicons/{name}", put_lexicon)
    app.router.add_get("/v1.0/lexicons/{name}", get_lexicon)
    app.router.add_delete("/v1.0/lexicons/{name}", delete_lexicon)
    app.router.add_get("/v1.0/openapi.json", openapi)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", serve_metrics)
    return app
