"""Requests for a session another node owns, carried to that node (an authenticated HTTP request,
node to node) and answered with its answer as it gave it: status, JSON body, Retry-After.

The service says where a request belongs (speakd.sessions.peers): :class:`OwnedElsewhere` for a
session live on another node (or a call its Asterisk named), :class:`NoSuchReference` with the
nodes to ask for a call or conference this node's Asterisk does not have. :func:`carry_middleware`
catches both. A carried request goes with the customer's own credential (every node of a fleet
checks the same [auth]), its request id, and :data:`CARRIED_BY` naming this node: the node that
gets it answers it itself, never carrying it again. A create carried to a node whose Asterisk
has no such reference is answered 404 :data:`NO_SUCH_REFERENCE` (between nodes only: the client
gets today's 400 once no node has it).

``/stream`` WebSockets are proxied both ways, each side's close passed on with its code. One
:class:`Carrier` (one aiohttp session, keep-alive connections to each node) serves them all.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Self

import aiohttp
import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from speakd.api.schemas import websocket_response
from speakd.errors import InvalidRequest, ServiceUnavailable, SpeakdError
from speakd.sessions.peers import NoSuchReference, OwnedElsewhere
from speakd.store.records import NodeAddress
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

# Names the node that carried the request (its [node] id); a request with it is never carried again.
CARRIED_BY = "X-Speakd-Carried-By"
# On a carried /stream upgrade that is refused: the refusal's JSON body (aiohttp's client drops
# the body of a failed handshake, so it rides in a header).
STREAM_ERROR = "X-Speakd-Error"
# A carried create's answer where the node's Asterisk has no such call or conference.
NO_SUCH_REFERENCE = "no_such_reference"
# What goes with a carried request besides its method, path, query (which may hold ?accesskey
# or ?token) and body: the customer's credential, what the body is.
FORWARDED = ("Authorization", "Cookie", "Content-Type")
# A node that does not take the connection within this long counts as unreachable.
CONNECT_TIMEOUT_S = 1.0
# A carried command's answer (a stop waits for the session's teardown, bounded by its setup's 15 s).
ANSWER_TIMEOUT_S = 60.0
# Close codes that say a socket ended without a close frame: not sent on, the other side gets "going away".
_NO_CLOSE_FRAME = {None, WSCloseCode.ABNORMAL_CLOSURE, 1005, 1015}


class NodeUnreachable(ServiceUnavailable):
    """The node that owns the session does not answer (HTTP 503)."""

    reason = "node_unreachable"
    retry_after = 2

    def __init__(self, what: str, node: NodeAddress, error: BaseException) -> None:
        detail = str(error) or type(error).__name__
        super().__init__(
            f"{what} is live on node '{node.id}' at {node.url}, which does not answer ({detail}); "
            "retry shortly: if that node is gone, its sessions end within 10 s"
        )


def is_carried(request: web.Request) -> bool:
    return CARRIED_BY in request.headers


def carried_headers(headers: Any, node_id: str, request_id: str) -> CIMultiDict[str]:
    """The headers of a request carried by node ``node_id``: the credential and body type as the
    client sent them (each copy of each), the request id, and the carrier's name."""
    out: CIMultiDict[str] = CIMultiDict()
    for name in FORWARDED:
        for value in headers.getall(name, []):
            out.add(name, value)
    out["X-Request-Id"] = request_id
    out[CARRIED_BY] = node_id
    return out


def target_url(node: NodeAddress, request: web.Request) -> URL:
    """The same path and query (as the client encoded them) on ``node``."""
    return URL(node.url.rstrip("/") + request.raw_path, encoded=True)


def _answer(status: int, body: bytes, headers: Any) -> web.Response:
    out = {"Content-Type": headers.get("Content-Type", "application/json")}
    if "Retry-After" in headers:
        out["Retry-After"] = headers["Retry-After"]
    return web.Response(status=status, body=body, headers=out)


def _not_there(status: int, body: bytes) -> str | None:
    """The message of a carried create's answer that the node has no such reference, else None."""
    if status != 404:
        return None
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    return error.get("message", "") if error.get("reason") == NO_SUCH_REFERENCE else None


class Carrier:
    """This node's requests to the others (``async with``: its HTTP session opened and closed)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=ANSWER_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S),
            skip_auto_headers=("User-Agent",),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("carrier is not open")
        return self._http

    def _headers(self, request: web.Request, request_id: str) -> CIMultiDict[str]:
        return carried_headers(request.headers, self.node_id, request_id)

    async def _send(self, request: web.Request, node: NodeAddress, request_id: str) -> tuple[int, bytes, Any]:
        body = await request.read()  # read once by aiohttp, kept
        async with self.http.request(
            request.method, target_url(node, request), data=body or None, headers=self._headers(request, request_id)
        ) as reply:
            return reply.status, await reply.read(), reply.headers

    async def forward(self, request: web.Request, where: OwnedElsewhere, request_id: str) -> web.Response:
        """The request answered by the node that owns what it is about."""
        try:
            status, body, headers = await self._send(request, where.node, request_id)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise NodeUnreachable(where.what, where.node, exc) from None
        if (message := _not_there(status, body)) is not None:
            raise InvalidRequest(message)  # the call named by the node's Asterisk has gone: today's answer
        return _answer(status, body, headers)

    async def search(self, request: web.Request, missing: NoSuchReference, request_id: str) -> web.Response:
        """A create for a reference this node's Asterisk has not: asked of the nodes that may have
        it, round by round, each round's nodes at once; the first answer other than "no such
        reference" is the answer. None has it: ``missing``, this node's answer."""
        for round_ in missing.rounds:
            answers: list[tuple[int, bytes, Any]] = []  # in the order they arrive
            await asyncio.gather(*(self._ask(request, node, request_id, answers) for node in round_))
            if answers:
                return _answer(*answers[0])
        raise missing

    async def _ask(
        self, request: web.Request, node: NodeAddress, request_id: str, answers: list[tuple[int, bytes, Any]]
    ) -> None:
        """A create asked of ``node``: its answer added to ``answers`` unless it has no such reference."""
        try:
            answer = await self._send(request, node, request_id)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:  # a node gone: its calls are too
            log.warning("create_search_unanswered", node=node.id, url=node.url, error=str(exc) or repr(exc))
            return
        if _not_there(answer[0], answer[1]) is None:
            answers.append(answer)

    async def stream(self, request: web.Request, where: OwnedElsewhere, request_id: str) -> web.StreamResponse:
        """The client's /stream WebSocket joined to one opened on the owner: messages both ways,
        the first close passed on to the other side with its code."""
        try:
            upstream = await self.http.ws_connect(
                target_url(node := where.node, request),
                headers=self._headers(request, request_id),
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                max_msg_size=0,  # the owner's sizes hold
            )
        except aiohttp.WSServerHandshakeError as refused:
            return _refused_stream(refused, node)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise NodeUnreachable(where.what, node, exc) from None
        downstream = websocket_response(timeout=2.0)
        try:
            await downstream.prepare(request)
            to_owner = asyncio.create_task(_relay(downstream, upstream), name="speakd-carry-to-owner")
            to_client = asyncio.create_task(_relay(upstream, downstream), name="speakd-carry-to-client")
            try:
                done, _ = await asyncio.wait({to_owner, to_client}, return_when=asyncio.FIRST_COMPLETED)
                if to_client in done:  # the owner closed: its last messages are sent, then its close
                    await downstream.close(code=_close_code(upstream.close_code))
                else:
                    await upstream.close(code=_close_code(downstream.close_code))
            finally:
                await cancel_and_wait(to_owner, to_client)
        finally:
            await upstream.close()
            if not downstream.closed:
                await downstream.close(code=WSCloseCode.GOING_AWAY)
        return downstream


async def _relay(source: Any, sink: Any) -> None:
    """Text and binary messages from ``source`` to ``sink`` until ``source`` closes."""
    async for message in source:
        if message.type == WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        else:  # an error: the socket is done
            return


def _close_code(code: int | None) -> int:
    return WSCloseCode.GOING_AWAY if code in _NO_CLOSE_FRAME else int(code)  # type: ignore[arg-type]


def _refused_stream(refused: aiohttp.WSServerHandshakeError, node: NodeAddress) -> web.Response:
    """The owner's refusal of the upgrade, as it gave it (its body from STREAM_ERROR)."""
    headers = refused.headers or {}
    try:
        body = json.dumps({"error": json.loads(headers[STREAM_ERROR])}).encode()
    except (KeyError, ValueError):  # refused before speakd's handler (a proxy on the way?)
        raise StreamRefused(node, refused.status) from None
    return _answer(refused.status, body, headers)


class StreamRefused(SpeakdError):
    """The owner refused a carried stream without saying why (its status passed on)."""

    reason = "stream_refused"

    def __init__(self, node: NodeAddress, status: int) -> None:
        super().__init__(f"node '{node.id}' at {node.url} refused the stream with status {status}")
        self.status = status
