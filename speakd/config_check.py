"""``speakd check-config``: the effective config on stdout, everything wrong with it on stderr.

Every problem found is listed, then counted. They come in three kinds:

- a **configuration error**: a section, key or value speakd refuses (unknown, of the wrong type,
  out of range); ``speakd run`` does not start. Exit status 2.
- an **error**: a config the daemon would run with but not do its job: the default provider
  cannot be used (every session that names no provider is refused), a provider section that
  is present cannot be used (a bad value; the daemon would run without that provider), or
  ``[tts] fallback`` names a provider that cannot be used (says would never go on with it). Exit 1.
- a **warning**: a config that works but is probably not what was meant: no access keys and no
  JWT secret (the HTTP API refuses every request; the dialplan and ARI ways in still work), an
  empty ARI password, an access key published with speakd. ``speakd run`` logs these at start.
  Exit 0.

A file that cannot be read at all is the one configuration error reported (exit 2, from the
caller). Building the providers here runs the same code as start-up (each provider module's
``create``), without loading models or connecting anywhere, so a value that start-up would
refuse is refused here too, with the same message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import TextIO

from speakd.config import Config, ConfigReading

# Access keys anyone can read in this repository: the sandbox's (scripts/dev-up writes it to
# var/dev.toml; docker/compose.yaml defaults to it) and speakd.example.toml's placeholder.
PUBLIC_ACCESS_KEYS = {
    "dev-accesskey": "the development key of scripts/dev-up and docker/compose.yaml",
    "replace-with-a-long-random-key": "the placeholder of speakd.example.toml",
}
NEW_KEY_COMMAND = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def warnings(reading: ConfigReading) -> list[str]:
    """What works but is probably not meant, each a sentence that says what to fix (never a secret)."""
    config, refused = reading.config, reading.refused
    found: list[str] = []
    for key, customer in config.auth.access_keys.items():
        if key in PUBLIC_ACCESS_KEYS:
            found.append(
                f"{reading.origin('auth.access_keys')}: the access key of customer {customer} is "
                f"{PUBLIC_ACCESS_KEYS[key]}, published with speakd: anyone can use it. "
                f"Replace it with a long random key, e.g. from {NEW_KEY_COMMAND}"
            )
    if not (config.auth.access_keys or config.auth.jwt_secret or {"auth.access_keys", "auth.jwt_secret"} & refused):
        found.append(
            "no access keys and no jwt_secret in [auth]: the HTTP API will refuse every request "
            f'(add access_keys = {{ "<key>" = "<customer id>" }}, a key e.g. from {NEW_KEY_COMMAND})'
        )
    if not config.ari.password and "ari.password" not in refused:
        found.append("ari.password is empty: Asterisk refuses ARI users without a password (see ari.conf)")
    return found


def provider_errors(reading: ConfigReading) -> list[str]:
    """Why the default provider, or a provider whose section is present, cannot be used."""
    from speakd.providers import ProviderRegistry

    config = reading.config
    errors: list[str] = []
    registry = ProviderRegistry.from_config(config.providers, log_unavailable=False)
    default = config.tts.default_provider
    for name, reason in registry.unavailable.items():
        if name == default and "tts.default_provider" not in reading.refused:
            usable = ", ".join(registry.names())
            errors.append(
                f"tts.default_provider is '{default}', which cannot be used: {reason}"
                + (f"; or set tts.default_provider to a usable one: {usable}" if usable else "")
            )
        elif name in config.providers:
            errors.append(reason)
        if name in config.tts.fallback and name != default and "tts.fallback" not in reading.refused:
            errors.append(f"tts.fallback names '{name}', which cannot be used: {reason}")
    return errors


def redacted(config: Config) -> dict:
    data = dataclasses.asdict(config)
    data["ari"]["password"] = "***" if config.ari.password else ""
    data["auth"]["jwt_secret"] = "***" if config.auth.jwt_secret else ""
    data["auth"]["access_keys"] = {k[:2] + "***": v for k, v in config.auth.access_keys.items()}
    for target in data["webhooks"]["customers"].values():
        target["secret"] = "***"
    data["store"]["url"] = config.store.shown_url() if config.store.url else ""
    data["node"]["url"] = config.node.url_with(config.server)  # the one it will use, given or not
    return data


def _counted(number: int, what: str) -> str:
    return f"{number} {what}{'' if number == 1 else 's'}"


def _say(err: TextIO, kind: str, messages: list[str]) -> None:
    for message in messages:
        err.write(f"speakd: {kind}: {message}\n")


def report_refusal(reading: ConfigReading, err: TextIO = sys.stderr) -> int:
    """``speakd run`` on a config with configuration errors: each on stderr, then how many; 2."""
    _say(err, "configuration error", reading.problems)
    err.write(f"speakd: {_counted(len(reading.problems), 'configuration error')} in {reading.path}: not started\n")
    return 2


def run(reading: ConfigReading, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    errors, warned = provider_errors(reading), warnings(reading)
    if not reading.problems:  # the config speakd would run on; none if it would not start
        try:
            out.write(json.dumps(redacted(reading.config), indent=2) + "\n")
            out.flush()
        except BrokenPipeError:
            # The reader stopped early (``| head``): not a fault of the config. Point stdout at
            # /dev/null so the interpreter's own flush at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    _say(err, "configuration error", reading.problems)
    _say(err, "error", errors)
    _say(err, "warning", warned)
    if reading.problems or errors or warned:
        counts = [
            _counted(len(reading.problems), "configuration error"),
            _counted(len(errors), "error"),
            _counted(len(warned), "warning"),
        ]
        verdict = "speakd run refuses it" if reading.problems else "speakd runs with it"
        err.write(f"speakd: {reading.path}: {', '.join(counts)}; {verdict}\n")
    return 2 if reading.problems else 1 if errors else 0
