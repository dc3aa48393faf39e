"""SIGHUP: re-read the config file and apply what can change without touching live sessions.

Applied: ``[auth] access_keys`` and ``jwt_secret`` (requests from then on are checked against
the new ones), the cloud providers' sections (see :meth:`ProviderRegistry.reload`: new says
use the rebuilt provider, says already synthesizing finish on the old one) and ``[log]
level``. Everything else (ports, ARI, media, store, webhooks, ``[piper]``, ``log.format``) is
read at start only: a change to it is logged as needing a restart and left as it runs.

The file is read again from the same path, with the same ``SPEAKD_<SECTION>_<KEY>``
environment as at start (a service's environment is fixed when it starts: a value set there
wins over the file and changes only with a restart). A file that does not load or validate,
or a provider that would stop working, is logged with what to fix and changes nothing.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import os
from typing import Any

import structlog

from speakd import config_check
from speakd.api.auth import Authenticator
from speakd.config import Config, ConfigError, read_config
from speakd.logging import set_log_level
from speakd.providers import MODULES, RESTART_ONLY, ProviderRegistry
from speakd.systemd_notify import ServiceNotifier
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

# Config keys a reload applies; and the provider sections, by name.
RELOADED_KEYS = frozenset({"auth.access_keys", "auth.jwt_secret", "log.level"}) | (frozenset(MODULES) - RESTART_ONLY)


def differences(old: Config, new: Config) -> list[str]:
    """The keys (``section.key``; a provider section by its name) whose values differ."""
    before, after = dataclasses.asdict(old), dataclasses.asdict(new)
    providers_before, providers_after = before.pop("providers"), after.pop("providers")
    changed = [
        f"{section}.{key}"
        for section, values in after.items()
        for key, value in values.items()
        if before[section].get(key) != value
    ]
    for name in sorted(set(providers_before) | set(providers_after)):
        if providers_before.get(name) != providers_after.get(name):
            changed.append(name)
    return changed


class ConfigReloader:
    """Owns the reload task: :meth:`request` (the SIGHUP handler) asks for a reload; requests
    that arrive while one runs are folded into one more."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        running: Config,
        authenticator: Authenticator,
        providers: ProviderRegistry,
        notifier: ServiceNotifier,
        wanted: asyncio.Event | None = None,
    ) -> None:
        self.path = path
        # What runs now: the config at start with the reloaded parts replaced, so a later
        # reload compares with what is in effect.
        self.running = copy.deepcopy(running)
        self._authenticator = authenticator
        self._providers = providers
        self._notifier = notifier
        self._wanted = wanted or asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def request(self) -> None:
        self._wanted.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="speakd-config-reload")

    async def _run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await self.reload()

    async def reload(self) -> bool:
        """One reload; True if the new config was taken (also when nothing changed)."""
        announced = self._notifier.reloading()
        try:
            return await self._reload()
        except Exception:  # a reload must never take the daemon down
            log.exception("config_reload_failed", config=str(self.path), kept="the running configuration")
            return False
        finally:
            if announced:
                self._notifier.reloaded()

    async def _reload(self) -> bool:
        where = str(self.path) if self.path else "(no file: environment only)"
        try:
            reading = read_config(self.path)
            error = str(ConfigError(*reading.problems)) if reading.problems else ""
        except (ConfigError, OSError) as exc:
            error = str(exc)
        if error:
            log.error(
                "config_reload_failed",
                config=where,
                error=error,
                kept="the running configuration; fix the file and reload again",
            )
            return False
        new = reading.config
        changed = differences(self.running, new)
        reloadable = {key for key in changed if key in RELOADED_KEYS}
        try:
            reloaded_providers = await self._providers.reload(new.providers)
        except ConfigError as exc:
            log.error(
                "config_reload_failed",
                config=where,
                error=str(exc),
                kept="the running configuration (nothing was applied); fix the file and reload again",
            )
            return False
        for name in reloaded_providers:
            self.running.providers[name] = new.providers.get(name, {})
            if name not in new.providers:
                self.running.providers.pop(name, None)
        running = self.running
        if {"auth.access_keys", "auth.jwt_secret"} & reloadable:
            self._authenticator.replace(new.auth.access_keys, new.auth.jwt_secret)
            running.auth.access_keys = dict(new.auth.access_keys)
            running.auth.jwt_secret = new.auth.jwt_secret
        fields: dict[str, Any] = {}
        if "auth.access_keys" in reloadable:
            fields["access_keys"] = len(new.auth.access_keys)  # how many, never which
        if "log.level" in reloadable:
            fields["log_level"] = new.log.level
        needs_restart = [key for key in changed if key not in reloadable]
        log.info("config_reloaded", config=where, changed=sorted(reloadable), **fields)
        for warning in config_check.warnings(reading):  # as at start: e.g. a published access key
            log.warning("config_warning", problem=warning)
        if needs_restart:
            log.warning(
                "config_reload_needs_restart",
                config=where,
                keys=needs_restart,
                detail="these keys are read at start only; they keep their running values until a restart",
            )
        if "log.level" in reloadable:  # after the lines above, so a quieter level still shows them
            set_log_level(new.log.level)
            running.log.level = new.log.level
        return True

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
