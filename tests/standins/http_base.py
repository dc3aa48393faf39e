"""An aiohttp server on the stand-in's own loop."""

from __future__ import annotations

from aiohttp import web

from standins.base import Standin


class HttpStandin(Standin):
    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def _start_server(self) -> None:
        app = web.Application()
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop_server(self) -> None:
        await self._runner.cleanup()


def gone(request: web.Request):
    def is_gone() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    return is_gone
