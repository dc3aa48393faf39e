"""Configuration: one TOML file, every key overridable by ``SPEAKD_<SECTION>_<KEY>``.

Sections and their keys are the dataclasses below. Provider sections (``[piper]``,
``[elevenlabs]``, ``[gcp]``, ``[aws]``) are kept as plain tables and read by each provider's
own module, so adding a provider key never touches this file. Environment values are
parsed to the type of the key they replace (``true``/``1`` for bools, ``k=v,k2=v2`` for
tables).

Reading collects every problem instead of stopping at the first (:func:`read_config`), so
``speakd check-config`` can list them all; each rule is written once, and reports into the
list it is given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import tomllib
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from speakd.audio import CODECS
from speakd.errors import either, reject_unknown
from speakd.logging import LOG_FORMATS, log_level_number
from speakd.parsing import parse_bool, parse_table
from speakd.provider_names import PROVIDER_NAMES

# Where ``speakd run`` and ``check-config`` look without ``-c``: the variable, then the file.
CONFIG_FILE_VARIABLE = "SPEAKD_CONFIG"
DEFAULT_CONFIG_FILE = "/etc/speakd/speakd.toml"


class ConfigError(Exception):
    """The configuration file or environment is invalid: ``problems`` holds each thing to fix,
    a sentence naming its key (the message joins them)."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@contextlib.contextmanager
def _collected(found: list[str]) -> Iterator[None]:
    """Run a rule that raises ConfigError (it is shared with code that wants the error) and
    add what it raised to ``found`` instead."""
    try:
        yield
    except ConfigError as exc:
        found.extend(exc.problems)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8090
    # CPU priority of the daemon (synthesis included): speech is real-time work and should
    # win over batch jobs (backups, transcoding) on a busy PBX. Lowering it needs
    # CAP_SYS_NICE (or Nice= in the systemd unit); without it speakd keeps its priority.
    nice: int = -10


@dataclass
class AriConfig:
    url: str = "http://127.0.0.1:8088"
    username: str = "speakd"
    password: str = ""
    app: str = "speakd"
    # Seconds; the events socket reconnects with exponential backoff up to this.
    reconnect_max_backoff: float = 10.0
    request_timeout: float = 5.0
    # Raise every speaking event as an ARI user event on its call's channel (a conference's
    # bridge), to each ARI application watching it.
    user_events: bool = True
    # The customer an ARI application's speakd_say/flush/stop acts for when the channel's
    # owner variable (auth.customer_variable) names none; empty: such commands are refused.
    operator_customer_id: str = ""


class TransportKind(StrEnum):
    """A media path into Asterisk (speakd.media implements each); defined here, below media,
    because [media] transport names them."""

    WEBSOCKET = "websocket"
    RTP = "rtp"


AUTO_TRANSPORT = "auto"  # [media] transport: pick a TransportKind on every ARI connect
MEDIA_TRANSPORTS = (AUTO_TRANSPORT, *TransportKind)


@dataclass
class MediaConfig:
    # websocket: Asterisk paces (chan_websocket, Asterisk 22.6+/21.11+/20.16+); rtp: speakd's
    # pacer process paces; auto: websocket where Asterisk has chan_websocket (checked on
    # every ARI connect), else rtp.
    transport: str = AUTO_TRANSPORT
    codec: str = "ulaw"
    # Audio queued at the far end ahead of playout: rides out a daemon stall this long;
    # a flush throws away at most this much synthesis.
    lead_ms: int = 1500
    # A played-position mark after this much audio: the resolution of "what was heard".
    mark_every_ms: int = 100
    # The speech level (dBFS) every provider's and voice's audio is brought to before it is
    # encoded (speakd.media.loudness); a say's volume goes on top.
    loudness_dbfs: float = -20.0


@dataclass
class RtpConfig:
    # Where speakd's RTP socket binds; Asterisk must be able to reach it (external_host).
    bind_host: str = "127.0.0.1"
    port: int = 0
    # The address Asterisk sends to and expects RTP from (ExternalMedia external_host);
    # empty means bind_host. Set it when binding 0.0.0.0.
    external_host: str = ""
    # SCHED_FIFO priority of the pacer process (needs CAP_SYS_NICE); 0 = normal scheduling.
    realtime_priority: int = 10


@dataclass
class AuthConfig:
    # access key -> customer id
    access_keys: dict[str, str] = field(default_factory=dict)
    jwt_secret: str = ""
    # A channel variable naming the customer that owns a call; another customer gets 404.
    customer_variable: str = "SPEAKD_CUSTOMER_ID"


@dataclass
class AgiConfig:
    # FastAGI service for the dialplan, "host:port" (e.g. "127.0.0.1:4573"); empty = off.
    # FastAGI has no authentication: listen on loopback or a network only Asterisk reaches.
    listen: str = ""
    # The customer of a channel that names none in [auth] customer_variable ("" = refuse).
    customer_id: str = ""

    def address(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"agi.listen must be host:port such as 127.0.0.1:4573, not {self.listen!r}")
        return host, int(port)


@dataclass
class StoreConfig:
    # SQLite, the embedded default: the database file.
    path: str = "/var/lib/speakd/speakd.sqlite3"
    # PostgreSQL instead (several speakd on one store): postgresql://user:password@host:port/db.
    url: str = ""

    def shown_url(self) -> str:
        """``url`` with its password masked (in the user part or the query), for output."""
        parts = urllib.parse.urlsplit(self.url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, host = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}:***@{host}"
        query = "&".join("password=***" if pair.startswith("password=") else pair for pair in parts.query.split("&"))
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")

    def problems(self, given: set[str]) -> list[str]:
        """``given``: the "store.<key>"s that the file or the environment set."""
        if not self.url:
            return []
        if "store.path" in given:
            return ["store.path and store.url are both set: set store.path for SQLite or store.url for PostgreSQL"]
        parts = urllib.parse.urlsplit(self.url)
        try:
            parts.port  # noqa: B018 (read for its ValueError)
        except ValueError:
            return [f"store.url has an invalid port: {self.shown_url()}"]
        if parts.scheme not in ("postgresql", "postgres") or not (parts.hostname or "host=" in parts.query):
            return [f"store.url must be postgresql://user:password@host:port/database, not {self.shown_url()!r}"]
        return []


# A node's id: a short token (it goes into logs, metrics and other nodes' requests as it is).
NODE_ID_PATTERN = r"[A-Za-z0-9._-]{1,64}"
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


@dataclass
class NodeConfig:
    # This speakd's name among the nodes sharing one store; the sessions it makes are its own.
    id: str = field(default_factory=socket.gethostname)
    # Where the other nodes reach this node's API; empty: http://<server.host>:<server.port>
    # (a wildcard host replaced by this host's name).
    url: str = ""

    def problems(self) -> list[str]:
        found: list[str] = []
        if not re.fullmatch(NODE_ID_PATTERN, self.id):
            found.append(f"node.id must be 1-64 letters, digits, '.', '_' or '-' (e.g. pbx-1), not {self.id!r}")
        if self.url:
            parts = urllib.parse.urlsplit(self.url)
            try:
                port = parts.port
            except ValueError:
                port = None
            if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
                found.append(f"node.url must be http(s)://host:port (this node's API), not {self.url!r}")
        return found

    def url_with(self, server: ServerConfig) -> str:
        """``url``, else the one ``server`` listens on as the other nodes can reach it."""
        if self.url:
            return self.url
        host = socket.gethostname() if server.host in _WILDCARD_HOSTS else server.host
        return f"http://{f'[{host}]' if ':' in host else host}:{server.port}"


@dataclass
class TtsConfig:
    # What an omitted ``provider`` means. The spec's default is elevenlabs; the sandbox
    # (scripts/dev-up, the tests) sets piper so that everything works offline.
    default_provider: str = "elevenlabs"
    # When a say's provider fails (speakd.providers.fallback; docs/providers.md "When a provider
    # fails"): the providers it goes on with, in order ([]: none, the say fails as before), ...
    fallback: list[str] = field(default_factory=list)
    # ... seconds to a provider's first audio and between two chunks of it before it counts as failed,
    first_audio_timeout: float = 3.0
    stall_timeout: float = 2.0
    # ... and its circuit breaker: skipped after this many failures in a row, for this many seconds.
    breaker_failures: int = 5
    breaker_cool_off: float = 30.0

    def problems(self) -> list[str]:
        found: list[str] = []
        if self.default_provider not in PROVIDER_NAMES:
            found.append(f"tts.default_provider must be {either(PROVIDER_NAMES)}, not {self.default_provider!r}")
        for name in self.fallback:
            if name not in PROVIDER_NAMES:
                found.append(f"tts.fallback names {name!r}: each must be {either(PROVIDER_NAMES)}")
        if len(set(self.fallback)) < len(self.fallback):
            found.append(f"tts.fallback names a provider twice: {self.fallback}")
        for key in ("first_audio_timeout", "stall_timeout", "breaker_cool_off"):
            if getattr(self, key) <= 0:
                found.append(f"tts.{key} must be more than 0 seconds, not {getattr(self, key)}")
        if self.breaker_failures < 1:
            found.append(f"tts.breaker_failures must be at least 1, not {self.breaker_failures}")
        return found


@dataclass
class CacheConfig:
    # The audio cache: providers' audio kept on disk and played again for the same text, voice
    # and settings (speakd.providers.cache). Shared by every session; a say with "cache": false
    # is never kept.
    enabled: bool = True
    # Where the entries are (created if missing); the systemd unit's CacheDirectory.
    dir: str = "/var/cache/speakd/audio"
    # The most the entries take on disk, in MiB: the least recently used go first.
    max_mb: int = 1024
    # Seconds after it was written that an entry is no longer played (the provider renders it
    # anew): 30 days.
    max_age: float = 2_592_000.0


@dataclass
class LogConfig:
    level: str = "info"
    format: str = "console"  # one of LOG_FORMATS


@dataclass
class WebhookTarget:
    """One customer's webhook endpoint."""

    url: str
    secret: str


@dataclass
class WebhooksConfig:
    # customer id -> { url = "https://...", secret = "..." }: that customer's events are POSTed
    # there, signed with the secret. A customer not listed gets no webhooks. Set in the file
    # ([webhooks.customers."<customer id>"]), not from the environment.
    customers: dict[str, Any] = field(default_factory=dict)
    # Seconds one POST may take (connect to last byte of the answer); a hanging endpoint costs this.
    request_timeout: float = 10.0
    # Retries wait first_backoff, then twice as long each time up to max_backoff (seconds), with jitter.
    first_backoff: float = 1.0
    max_backoff: float = 300.0
    # An event not delivered this many seconds after it happened is dropped, with a warning.
    give_up_after: float = 86400.0

    def targets(self) -> dict[str, WebhookTarget]:
        """The endpoints (of a config load_config accepted)."""
        return {customer: WebhookTarget(str(t["url"]), str(t["secret"])) for customer, t in self.customers.items()}

    def problems(self) -> list[str]:
        found: list[str] = []
        for customer, target in self.customers.items():
            where = f"webhooks.customers.{customer}"
            if not isinstance(target, dict):
                found.append(
                    f'{where} must be a table {{ url = "https://...", secret = "..." }} '
                    f"(set webhooks in the config file, not the environment)"
                )
                continue
            with _collected(found):
                reject_unknown(target, ("secret", "url"), "key", where=where, error=ConfigError)
            url = target.get("url")
            if not isinstance(url, str) or not url:
                found.append(f"{where}.url must be set to the endpoint's http:// or https:// URL")
            else:
                parsed = urllib.parse.urlsplit(url)
                if parsed.scheme not in ("http", "https") or not parsed.hostname:
                    found.append(f"{where}.url must be an http:// or https:// URL with a host, not {url!r}")
            secret = target.get("secret")
            if not isinstance(secret, str) or not secret:
                found.append(f"{where}.secret must be a non-empty string (the key the POSTs are signed with)")
        for key in ("request_timeout", "first_backoff", "max_backoff", "give_up_after"):
            if getattr(self, key) <= 0:
                found.append(f"webhooks.{key} must be more than 0 seconds, not {getattr(self, key)}")
        if self.max_backoff < self.first_backoff:
            found.append(
                f"webhooks.max_backoff ({self.max_backoff}) must be at least webhooks.first_backoff "
                f"({self.first_backoff})"
            )
        return found


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    ari: AriConfig = field(default_factory=AriConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    rtp: RtpConfig = field(default_factory=RtpConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    agi: AgiConfig = field(default_factory=AgiConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    log: LogConfig = field(default_factory=LogConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Every value out of its range or at odds with another, each a sentence naming its key."""
        found: list[str] = []
        if not -20 <= self.server.nice <= 19:
            found.append(f"server.nice must be -20..19, not {self.server.nice}")
        if self.media.codec not in CODECS:
            found.append(
                f"media.codec must be {either(CODECS)}, not {self.media.codec!r} "
                "(Asterisk drops slin RTP on ExternalMedia)"
            )
        if self.media.transport not in MEDIA_TRANSPORTS:
            found.append(f"media.transport must be {either(MEDIA_TRANSPORTS)}, not {self.media.transport!r}")
        if not 20 <= self.media.mark_every_ms <= 1000:
            found.append(f"media.mark_every_ms must be 20..1000, not {self.media.mark_every_ms}")
        if not 2 * self.media.mark_every_ms <= self.media.lead_ms <= 15_000:
            found.append(
                f"media.lead_ms must be between twice media.mark_every_ms and 15000 (Asterisk queues at most "
                f"20 s), not {self.media.lead_ms}"
            )
        if not -40 <= self.media.loudness_dbfs <= -10:
            found.append(f"media.loudness_dbfs must be -40..-10 (dBFS speech level), not {self.media.loudness_dbfs}")
        found.extend(self.tts.problems())
        if self.agi.listen:
            with _collected(found):
                self.agi.address()
        if self.cache.max_mb < 1:
            found.append(f"cache.max_mb must be at least 1 (MiB), not {self.cache.max_mb}")
        if self.cache.max_age <= 0:
            found.append(f"cache.max_age must be more than 0 seconds, not {self.cache.max_age}")
        if self.cache.enabled and not self.cache.dir:
            found.append("cache.dir must name a directory (or set cache.enabled = false)")
        try:
            log_level_number(self.log.level)
        except ValueError as exc:
            found.append(str(exc))
        if self.log.format not in LOG_FORMATS:
            found.append(f"log.format must be {either(LOG_FORMATS)}, not {self.log.format!r}")
        return found + self.node.problems() + self.webhooks.problems()


_SECTIONS = {f.name: f for f in dataclasses.fields(Config) if f.name != "providers"}


def _parse_env_value(raw: str, current: Any, where: str) -> Any:
    if isinstance(current, bool):
        try:
            return parse_bool(raw)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {raw!r}") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
    if isinstance(current, dict):
        try:
            return parse_table(raw)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if isinstance(current, list):  # "gcp,piper"
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def _file_value(current: Any, value: Any, where: str) -> Any:
    """``value`` from the file as the type of the key's default ``current``; ConfigError if it is not one."""
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
    elif isinstance(current, int | float):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a number")
        return type(current)(value)
    elif isinstance(current, str) and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string")
    elif isinstance(current, dict) and not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")
    elif isinstance(current, list) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ConfigError(f'{where} must be a list of strings, e.g. ["gcp", "piper"]')
    return value


@dataclass
class ConfigReading:
    """A configuration as read, with every problem found in it: it runs only without any."""

    config: Config
    path: str | None
    problems: list[str] = field(default_factory=list)
    # "section.key" -> the SPEAKD_* variable that set it (over the file)
    from_environment: dict[str, str] = field(default_factory=dict)
    # "section.key" whose given value was refused: the key keeps its default, which checks
    # that read it should not judge.
    refused: set[str] = field(default_factory=set)
    # "section.key" that the file or the environment set (the rest keep their defaults)
    given: set[str] = field(default_factory=set)

    def origin(self, key: str) -> str:
        """Where ``key`` ("section.key") was set, for a message: its variable, else the file."""
        if key in self.from_environment:
            return self.from_environment[key]
        return f"{key} in {self.path}" if self.path else key

    @contextlib.contextmanager
    def _setting(self, key: str) -> Iterator[None]:
        """Around setting ``key`` ("section.key"): what it raises is a problem, and the key keeps its default."""
        try:
            yield
        except ConfigError as exc:
            self.problems.extend(exc.problems)
            self.refused.add(key)
        else:
            self.refused.discard(key)  # the environment's good value over the file's bad one
            self.given.add(key)


def config_file(given: str | None, environ: Mapping[str, str] | None = None, default: str = DEFAULT_CONFIG_FILE) -> str:
    """The file to run on: ``given`` (``-c``), else ``$SPEAKD_CONFIG``, else ``default`` if it
    exists; ConfigError saying how to name one if none is."""
    environ = os.environ if environ is None else environ
    path = given or environ.get(CONFIG_FILE_VARIABLE) or (default if os.path.exists(default) else None)
    if not path:
        raise ConfigError(
            f"no config file: pass -c FILE, set {CONFIG_FILE_VARIABLE}=FILE, or create {default} "
            "(speakd.example.toml has every key)"
        )
    return path


def read_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> ConfigReading:
    """Read ``path`` (if given), then apply ``SPEAKD_<SECTION>_<KEY>`` overrides, collecting every
    problem; a file that cannot be read or parsed raises ConfigError (nothing more to check)."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text: {exc}") from None

    reading = ConfigReading(Config(), None if path is None else os.fspath(path))
    config, found = reading.config, reading.problems
    with _collected(found):
        reject_unknown(data, [*_SECTIONS, *PROVIDER_NAMES], "config section", error=ConfigError)

    for name, section_field in _SECTIONS.items():
        values = data.get(name, {})
        section_obj = section_field.default_factory()  # type: ignore[misc]
        setattr(config, name, section_obj)
        if not isinstance(values, dict):
            found.append(f"[{name}] must be a table")
            continue
        known = [key_field.name for key_field in dataclasses.fields(section_obj)]
        with _collected(found):
            reject_unknown(values, sorted(known), "key", where=f"[{name}]", error=ConfigError)
        for key, value in values.items():
            if key in known:
                with reading._setting(f"{name}.{key}"):
                    setattr(section_obj, key, _file_value(getattr(section_obj, key), value, f"[{name}] {key}"))
    for name in PROVIDER_NAMES:
        if name in data:
            if isinstance(data[name], dict):
                config.providers[name] = dict(data[name])
            else:
                found.append(f"[{name}] must be a table")

    for env_key, raw in environ.items():
        if not env_key.startswith("SPEAKD_"):
            continue
        rest = env_key[len("SPEAKD_") :].lower()
        for name in _SECTIONS:
            if rest.startswith(name + "_"):
                key = rest[len(name) + 1 :]
                section_obj = getattr(config, name)
                if not hasattr(section_obj, key):
                    break  # SPEAKD_* variables of other tools (e.g. tests) are not ours to reject
                reading.from_environment[f"{name}.{key}"] = env_key
                with reading._setting(f"{name}.{key}"):
                    setattr(section_obj, key, _parse_env_value(raw, getattr(section_obj, key), env_key))
                break
        else:
            for name in PROVIDER_NAMES:
                if rest.startswith(name + "_"):
                    key = rest[len(name) + 1 :]
                    config.providers.setdefault(name, {})[key] = raw
                    reading.from_environment[f"{name}.{key}"] = env_key
                    break

    found.extend(config.problems())
    found.extend(config.store.problems(reading.given))
    return reading


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The configuration of ``path`` and the environment; ConfigError with every problem if it has any."""
    reading = read_config(path, environ)
    if reading.problems:
        raise ConfigError(*reading.problems)
    return reading.config
