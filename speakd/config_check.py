"""``speakd check-config``: the effective config on stdout, what is wrong with it on stderr.

Problems come in two kinds. An **error** is a config the daemon would run with but not do its
job: the default provider cannot be used (every session that names no provider is refused), or
a provider section that is present cannot be used (a bad value; the daemon would run without
that provider). A **warning** is a config that works but is probably not what was meant: no
access keys and no JWT secret (the HTTP API refuses every request; the dialplan and ARI ways in
still work), an empty ARI password. Exit status: 0 with warnings only, 1 with an error (2, from
the caller, when the file cannot be loaded at all).

Building the providers here runs the same code as start-up (each provider module's ``create``),
without loading models or connecting anywhere, so a value that start-up would refuse is refused
here too, with the same message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import TextIO

from speakd.config import Config


def problems(config: Config) -> tuple[list[str], list[str]]:
    """(errors, warnings), each a sentence that says what to fix."""
    from speakd.providers import ProviderRegistry

    errors: list[str] = []
    warnings: list[str] = []
    registry = ProviderRegistry.from_config(config.providers, log_unavailable=False)
    default = config.tts.default_provider
    for name, reason in registry.unavailable.items():
        if name == default:
            usable = ", ".join(registry.names())
            errors.append(
                f"tts.default_provider is '{default}', which cannot be used: {reason}"
                + (f"; or set tts.default_provider to a usable one: {usable}" if usable else "")
            )
        elif name in config.providers:
            errors.append(reason)
    if not config.auth.access_keys and not config.auth.jwt_secret:
        warnings.append(
            "no access keys and no jwt_secret in [auth]: the HTTP API will refuse every request "
            "(add [auth.access_keys] '<key>' = '<customer id>')"
        )
    if not config.ari.password:
        warnings.append("ari.password is empty: Asterisk refuses ARI users without a password (see ari.conf)")
    return errors, warnings


def redacted(config: Config) -> dict:
    data = dataclasses.asdict(config)
    data["ari"]["password"] = "***" if config.ari.password else ""
    data["auth"]["jwt_secret"] = "***" if config.auth.jwt_secret else ""
    data["auth"]["access_keys"] = {k[:2] + "***": v for k, v in config.auth.access_keys.items()}
    for target in data["webhooks"]["customers"].values():
        target["secret"] = "***"
    return data


def run(config: Config, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    errors, warnings = problems(config)
    try:
        out.write(json.dumps(redacted(config), indent=2) + "\n")
        out.flush()
    except BrokenPipeError:
        # The reader stopped early (``| head``): not a fault of the config. Point stdout at
        # /dev/null so the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    for warning in warnings:
        err.write(f"speakd: warning: {warning}\n")
    for error in errors:
        err.write(f"speakd: error: {error}\n")
    return 1 if errors else 0
