"""systemd's notify protocol (``Type=notify``) and watchdog, without libsystemd.

The protocol is one datagram per message to the unix socket named in ``$NOTIFY_SOCKET`` (a
leading ``@`` means the abstract namespace), holding newline-separated ``KEY=value`` lines:
``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``STATUS=...``, ``WATCHDOG=1``. With
``WatchdogSec=`` set, systemd passes ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, the process
that must ping) and restarts the service when no ``WATCHDOG=1`` arrives within that time.

:class:`ServiceNotifier` pings from a task on the daemon's own event loop, so a loop that is
stuck (a blocking call, a busy callback) stops the pings and gets the service restarted. It
also keeps ``STATUS=`` current: every second it asks the daemon for its status line and sends
it only when the line changed (a length and a comparison; no datagram while nothing changes).
Without ``$NOTIFY_SOCKET`` (run by hand, in tests, in a container) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, MutableMapping

import structlog

from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

# How often the status line is re-read: STATUS lags a change by at most this.
STATUS_POLL_S = 1.0
# systemd's own variables: removed from our environment once read, so the processes we start
# (the RTP pacer) do not inherit them and speak for us (what sd_notify's unset_environment does).
_SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(notify_socket: str) -> str:
    """The address to send to: ``@name`` is ``\\0name`` in the abstract namespace."""
    if notify_socket.startswith("@"):
        return "\0" + notify_socket[1:]
    return notify_socket


def watchdog_interval(environ: MutableMapping[str, str], pid: int) -> float | None:
    """Seconds between pings (half of ``$WATCHDOG_USEC``), or None when no watchdog is asked of
    this process (unset, not a positive number, or ``$WATCHDOG_PID`` names another process)."""
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 / 2


class NotifySocket:
    """Sends notify datagrams; never blocks and never raises (systemd being away must not
    cost a call its audio)."""

    def __init__(self, notify_socket: str) -> None:
        self.address = socket_address(notify_socket)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self._failing = False

    def send(self, message: str) -> bool:
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._failing:  # once per outage, not once per ping
                log.warning("sd_notify_failed", socket=self.address.replace("\0", "@"), error=str(exc))
            self._failing = True
            return False
        if self._failing:
            log.info("sd_notify_recovered")
        self._failing = False
        return True

    def close(self) -> None:
        self._sock.close()


class ServiceNotifier:
    """The daemon's link to systemd: readiness, reload, stopping, STATUS and the watchdog.

    ``status`` returns the current status line; it is called from the event loop once a second
    and must be cheap. Owned by the daemon: :meth:`start` once, :meth:`aclose` at the end.
    """

    def __init__(
        self,
        notify: NotifySocket | None,
        status: Callable[[], str],
        watchdog_every: float | None,
    ) -> None:
        self._notify = notify
        self._status = status
        self.watchdog_every = watchdog_every
        self._last_status: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready_sent = False

    @classmethod
    def from_environ(
        cls, status: Callable[[], str], environ: MutableMapping[str, str] | None = None
    ) -> ServiceNotifier:
        environ = os.environ if environ is None else environ
        notify_socket = environ.get("NOTIFY_SOCKET", "")
        every = watchdog_interval(environ, os.getpid()) if notify_socket else None
        for name in _SYSTEMD_VARIABLES:
            environ.pop(name, None)
        notifier = cls(NotifySocket(notify_socket) if notify_socket else None, status, every)
        if notify_socket:
            log.info(
                "systemd_notify",
                socket=notify_socket,
                watchdog_ping_every_s=round(every, 3) if every else "off",
            )
        return notifier

    def _send(self, *lines: str) -> None:
        if self._notify is not None:
            self._notify.send("\n".join(lines))

    def start(self) -> None:
        if self._notify is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="speakd-systemd-notify")

    def ready(self) -> None:
        """READY=1 (once); with the status line, so ``systemctl status`` says why at once."""
        if not self.ready_sent:
            self.ready_sent = True
            self._send("READY=1", self._status_line(force=True))

    def reloading(self) -> bool:
        """RELOADING=1 before a reload (only once ready: before that, the READY=1 that ends a
        reload would claim readiness we do not have). Returns whether it was sent."""
        if not self.ready_sent:
            return False
        # MONOTONIC_USEC: what Type=notify-reload (systemd 253+) requires with RELOADING=1.
        self._send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        return True

    def reloaded(self) -> None:
        if self.ready_sent:
            self._send("READY=1", self._status_line(force=True))

    def stopping(self) -> None:
        self._send("STOPPING=1", self._status_line(force=True))

    def _status_line(self, force: bool = False) -> str:
        status = self._status()
        if not force and status == self._last_status:
            return ""
        self._last_status = status
        return f"STATUS={status}"

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time()
        while True:
            now = loop.time()
            if self.watchdog_every is not None and now >= next_ping:
                self._send("WATCHDOG=1")
                next_ping = now + self.watchdog_every
            status = self._status_line()
            if status:
                self._send(status)
            wake = now + STATUS_POLL_S
            if self.watchdog_every is not None:
                wake = min(wake, next_ping)
            await asyncio.sleep(max(0.0, wake - loop.time()))

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._notify is not None:
            self._notify.close()
            self._notify = None
