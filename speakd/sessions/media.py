"""Which media transport sessions use, and how one is opened for an ExternalMedia channel.

``[media] transport = auto`` asks Asterisk on every ARI (re)connect whether chan_websocket is
loaded: websocket if so (Asterisk paces), else rtp (speakd's pacer process paces). The
choice is logged; a session keeps the transport it was set up with.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any

import structlog

from speakd.ari.client import AriClient
from speakd.ari.errors import AriError
from speakd.config import AUTO_TRANSPORT, TransportKind
from speakd.media.channel_gate import ChannelGate
from speakd.media.codec import PAYLOAD_TYPES
from speakd.media.pacer_protocol import Stats
from speakd.media.rtp import FRAME_SAMPLES
from speakd.media.rtp_transport import PacerProcess, RtpTransport
from speakd.media.transport import MediaTransport, TransportError
from speakd.media.websocket import WebSocketTransport

log = structlog.get_logger(__name__)

CHAN_WEBSOCKET = "chan_websocket.so"


class MediaPaths:
    """Owns what the transports share: the RTP socket and its pacer process, and the gate that
    keeps media WebSocket connects apart from media channels being made or removed."""

    def __init__(
        self,
        ari: AriClient,
        *,
        mode: str,
        codec: str,
        rtp_bind: tuple[str, int],
        rtp_external_host: str,
        realtime_priority: int,
        on_pacer_stats: Callable[[Stats], None] | None = None,
    ) -> None:
        self.ari = ari
        self.mode = mode
        self.codec = codec
        self.kind = TransportKind.RTP if mode == TransportKind.RTP else TransportKind.WEBSOCKET
        self._rtp_bind = rtp_bind
        self._rtp_external_host = rtp_external_host
        self._realtime_priority = realtime_priority
        self._on_pacer_stats = on_pacer_stats
        self._stack = contextlib.AsyncExitStack()
        self.pacer: PacerProcess | None = None
        self.external_host = ""
        self._announced = False
        # Taken for every transport: a session keeps its transport when ``auto`` switches, and
        # RTP sessions only ever change channels, which never wait for one another.
        self.gate = ChannelGate()

    def changing(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Around making or removing a media channel (speakd.media.channel_gate)."""
        return self.gate.changing()

    async def __aenter__(self) -> MediaPaths:
        if self.mode == TransportKind.RTP:
            await self._start_rtp()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _start_rtp(self) -> None:
        if self.pacer is not None:
            return
        # One socket sends every session's RTP (each ExternalMedia channel has its own port to
        # send to); the pacer process owns it. speakd never reads from it: in a conference
        # Asterisk sends the room's mix back, and a tiny receive buffer lets the kernel drop it.
        rtp_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stack.callback(rtp_socket.close)
        rtp_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        rtp_socket.bind(self._rtp_bind)
        self.external_host = f"{self._rtp_external_host or self._rtp_bind[0]}:{rtp_socket.getsockname()[1]}"
        self.pacer = await self._stack.enter_async_context(
            PacerProcess(rtp_socket, realtime_priority=self._realtime_priority, on_stats=self._on_pacer_stats)
        )

    async def choose(self) -> None:
        """On every ARI connect: decide the transport for new sessions (``auto``)."""
        if self.mode != AUTO_TRANSPORT:
            return
        try:
            has_websocket = await self.ari.has_module(CHAN_WEBSOCKET)
        except AriError as exc:
            log.warning("media_transport_check_failed", error=str(exc), keeping=str(self.kind))
            return
        kind = TransportKind.WEBSOCKET if has_websocket else TransportKind.RTP
        if kind is TransportKind.RTP:
            await self._start_rtp()
        if kind is not self.kind or not self._announced:
            self._announced = True
            log.info(
                "media_transport",
                transport=str(kind),
                why="chan_websocket is loaded" if has_websocket else "Asterisk has no chan_websocket",
            )
        self.kind = kind

    def external_media_params(self) -> dict[str, str]:
        """``POST /channels/externalMedia`` parameters for the current transport."""
        if self.kind is TransportKind.WEBSOCKET:
            return {
                "transport": "websocket",
                "encapsulation": "none",
                "connection_type": "server",
                "external_host": "INCOMING",
                "format": self.codec,
            }
        return {"transport": "udp", "encapsulation": "rtp", "external_host": self.external_host, "format": self.codec}

    async def open(self, channel: dict[str, Any], **log_context: str) -> MediaTransport:
        """Open the transport for a created ExternalMedia channel."""
        variables = channel.get("channelvars") or {}
        if self.kind is TransportKind.WEBSOCKET:
            connection_id = variables.get("MEDIA_WEBSOCKET_CONNECTION_ID")
            if not connection_id:
                raise TransportError("Asterisk did not report the media WebSocket (MEDIA_WEBSOCKET_CONNECTION_ID)")
            websocket = WebSocketTransport(
                lambda: self.ari.media_websocket(connection_id), FRAME_SAMPLES, log_context=log_context
            )
            async with self.gate.connecting():
                await websocket.start()
            return websocket
        host = variables.get("UNICASTRTP_LOCAL_ADDRESS")
        port = variables.get("UNICASTRTP_LOCAL_PORT")
        if not host or not port or self.pacer is None:
            raise TransportError("Asterisk did not report the ExternalMedia RTP address (UNICASTRTP_LOCAL_*)")
        rtp = RtpTransport(self.pacer, (host, int(port)), PAYLOAD_TYPES[self.codec], log_context=log_context)
        await rtp.start()
        return rtp

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = {"media_transport": str(self.kind)}
        if self.pacer is not None:
            body.update(
                pacer_realtime=self.pacer.realtime,
                pacer_max_late_ms=round(self.pacer.max_late_ms, 1),
                pacer_stalls=self.pacer.stalls,
            )
        return body
