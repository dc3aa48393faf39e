"""The audio cache: providers' audio with its word marks, on disk, shared by every session.

An adapter like the others under ``speakd.providers``: :class:`CachingProvider` wraps a provider
(the registry's ``wrap``), so the session layer sees a provider whose second rendering of a text
comes off the disk without asking the provider, and at once.

* The key (:func:`cache_key`) is a SHA-256 of the provider's name, what its sound depends on as
  the provider itself states it (:meth:`~speakd.providers.base.Provider.rendering`: voice, model,
  language as resolved, the audio asked for, its voice settings), the payload type and the text.
  A streamed say's chunk spoken over a provider's text stream (whose prosody carries over from
  the chunks before) is keyed apart from the same text said on its own.
* An entry is one file ``<dir>/<2 hex>/<key>``: the audio as the provider sent it, then a JSON
  trailer (format, marks, the key) and a fixed footer (trailer length, magic). It is written to
  a temporary file as the audio arrives and renamed into place once the provider has finished
  (a rendering cut, failed or flushed is never an entry), so a reader never sees half an entry;
  one that does not parse (cut short, another format) is a miss, and removed.
* Bounded in bytes (least recently used out, before a new entry is renamed in, so the files
  never exceed ``max_bytes``) and in age (an entry written longer than ``max_age`` ago is a miss,
  and removed). A file's mtime is when it was written, its atime when it was last used (set on
  each hit): the index is rebuilt from them at start, so the cache survives a restart.
* A request with ``cache = False`` (personal data) neither reads nor writes the cache.
* Reads and writes go through worker threads in blocks (a slow disk never holds the event loop),
  and a hit is streamed in :data:`READ_BYTES` blocks: no entry is held whole in memory. A cache
  that fails (a full disk, a file removed under it) costs its entry, never a say.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, get_args

import structlog

from speakd.audio import AudioFormat, Encoding
from speakd.config import CacheConfig
from speakd.errors import InvalidRequest, ProviderError, ServiceUnavailable
from speakd.providers.base import AudioChunk, DelegatingProvider, Provider, SynthesisRequest, TextStream

log = structlog.get_logger(__name__)

FORMAT_VERSION = 1
MAGIC = b"SPKDAUD1"
FOOTER = struct.Struct("<Q8s")  # trailer length, MAGIC
TEMP_DIR = "tmp"  # syntheses under way; emptied at start
READ_BYTES = 32 * 1024  # a hit's audio is handed on in blocks of this
WRITE_BYTES = 64 * 1024  # a miss's audio is written in blocks of this
_ENCODINGS: tuple[str, ...] = get_args(Encoding)
_BYTES_PER_SAMPLE = {"pcm_s16le": 2, "ulaw": 1, "alaw": 1}


def cache_key(provider: str, rendering: Mapping[str, str], text: str) -> str:
    """The entry of ``text`` spoken by ``provider`` as ``rendering`` says (hex SHA-256)."""
    fields = {"v": FORMAT_VERSION, "provider": provider, "rendering": dict(rendering), "text": text}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class EntryInfo:
    """An entry as ``POST /v1.0/prompts`` reports it."""

    key: str
    bytes: int
    duration_ms: int


@dataclass(slots=True)
class _Indexed:
    size: int
    written: float  # unix seconds (the file's mtime)


@dataclass(slots=True)
class _Opened:
    """A valid entry's file, open, positioned at its audio."""

    file: BinaryIO
    format: AudioFormat
    size: int  # of the file
    audio_bytes: int
    marks: list[tuple[int, int]]  # (characters spoken, sample offset from the entry's start)


class AudioCache:
    """The entries under one directory. Not thread-safe: used from the event loop only (its file
    work runs in worker threads, the index is touched only on the loop)."""

    def __init__(
        self, directory: str | os.PathLike[str], max_bytes: int, max_age: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self._index: OrderedDict[str, _Indexed] = OrderedDict()  # least recently used first
        self.bytes = 0
        # Since start, for the metrics.
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the directory and index what a previous run left (expired entries removed,
        the bound applied: a smaller ``max_bytes`` than last time takes effect at once)."""
        found = await asyncio.to_thread(self._scan)
        for key, size, written, _used in sorted(found, key=lambda entry: entry[3]):
            self._index[key] = _Indexed(size, written)
            self.bytes += size
        now = self._clock()
        await self._remove([key for key, entry in self._index.items() if now - entry.written > self.max_age])
        await self._remove(self._make_room(0))
        log.info("audio_cache_opened", directory=str(self.directory), entries=len(self._index), bytes=self.bytes)

    def _scan(self) -> list[tuple[str, int, float, float]]:
        """(key, size, written, last used) of every entry file; temporary files removed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.directory / TEMP_DIR, ignore_errors=True)
        (self.directory / TEMP_DIR).mkdir()
        found = []
        for sub in self.directory.iterdir():
            if sub.name == TEMP_DIR or not sub.is_dir():
                continue
            for path in sub.iterdir():
                with contextlib.suppress(OSError):
                    stat = path.stat()
                    found.append((path.name, stat.st_size, stat.st_mtime, stat.st_atime))
        return found

    @property
    def entries(self) -> int:
        return len(self._index)

    def wrap(self, provider: Provider) -> Provider:
        """``provider`` with its renderings kept here (for ProviderRegistry.wrap)."""
        return CachingProvider(provider, self)

    # -- entries ----------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / key

    async def info(self, key: str, *, used: bool = False) -> EntryInfo | None:
        """The entry ``key`` if it is there and valid (not counted as a hit or miss); ``used``: it
        counts as used now (least recently used last)."""
        opened = await self._open(key, touch=used)
        if opened is None:
            return None
        opened.file.close()
        if used and key in self._index:
            self._index.move_to_end(key)
        return EntryInfo(key, opened.size, _duration_ms(opened.audio_bytes, opened.format))

    async def read(self, key: str) -> AsyncIterator[AudioChunk] | None:
        """The entry's audio in blocks with their marks, or None: a miss (counted as either)."""
        opened = await self._open(key, touch=True)
        if opened is None:
            self.misses += 1
            return None
        self.hits += 1
        if key in self._index:  # (not taken out while the file was opened)
            self._index.move_to_end(key)
        return _blocks(opened)

    async def _open(self, key: str, *, touch: bool) -> _Opened | None:
        entry = self._index.get(key)
        if entry is None:
            return None
        if self._clock() - entry.written > self.max_age:
            await self._remove([key])
            return None
        try:
            return await asyncio.to_thread(_open_entry, self._path(key), key, touch)
        except (OSError, ValueError) as exc:  # removed under us, cut short, not ours
            log.warning("audio_cache_entry_unreadable", key=key, error=str(exc), effect="a miss; removed")
            await self._remove([key])
            return None

    def writer(self, key: str, provider: str, rendering: Mapping[str, str]) -> EntryWriter:
        return EntryWriter(self, key, {"provider": provider, "rendering": dict(rendering)})

    async def _commit(self, key: str, temp: Path, size: int) -> bool:
        """Put a finished temporary file in place as ``key``, making room first."""
        if size > self.max_bytes:
            log.info("audio_cache_entry_too_big", key=key, bytes=size, max_bytes=self.max_bytes)
            return False
        old = self._index.pop(key, None)  # two identical misses: the later replaces the earlier
        if old is not None:
            self.bytes -= old.size
        victims = self._make_room(size)
        self._index[key] = _Indexed(size, self._clock())
        self.bytes += size
        try:
            # The victims go before the rename: the files never exceed the bound.
            await asyncio.to_thread(_replace, [self._path(k) for k in victims], temp, self._path(key))
        except OSError as exc:
            log.warning("audio_cache_write_failed", key=key, error=str(exc), effect="not cached")
            if self._index.pop(key, None) is not None:
                self.bytes -= size
            return False
        return True

    def _make_room(self, size: int) -> list[str]:
        """Take least recently used entries out of the index until ``size`` more bytes fit."""
        victims = []
        for key in list(self._index):
            if self.bytes + size <= self.max_bytes:
                break
            self.bytes -= self._index.pop(key).size
            self.evictions += 1
            victims.append(key)
        return victims

    async def _remove(self, keys: list[str]) -> None:
        for key in keys:
            entry = self._index.pop(key, None)
            if entry is not None:
                self.bytes -= entry.size
        if keys:
            await asyncio.to_thread(_unlink_all, [self._path(k) for k in keys])

    # -- rendering ahead (POST /v1.0/prompts) -------------------------------------------------

    async def render(self, provider: Provider, request: SynthesisRequest) -> tuple[EntryInfo, bool]:
        """``request`` rendered into the cache through ``provider`` (a :class:`CachingProvider`)
        unless it is there: (the entry, whether it was made now)."""
        key = cache_key(provider.name, provider.rendering(request), request.text)
        info = await self.info(key, used=True)  # asked for again: kept as if said
        if info is not None:
            return info, False
        audio = False
        async with contextlib.aclosing(provider.synthesize(request)) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                audio = audio or bool(chunk.data)
        info = await self.info(key)
        if info is None:
            if not audio:  # a provider that failed raised; this one had nothing to say
                raise InvalidRequest(f"provider '{provider.name}' makes no audio of this text: nothing to render")
            raise ServiceUnavailable("the audio could not be stored in the cache (the daemon log says why)")
        return info, True


@dataclass
class EntryWriter:
    """One miss's audio going to a temporary file as it arrives: :meth:`add` each chunk (after
    handing it on), :meth:`commit` once the provider finished; leaving it unfinished
    (:meth:`discard`) removes the file. A failure to write abandons the entry, quietly."""

    cache: AudioCache
    key: str
    described: dict[str, Any]
    format: AudioFormat | None = None
    audio_bytes: int = 0
    marks: list[tuple[int, int]] = field(default_factory=list)
    _pending: list[bytes] = field(default_factory=list)
    _pending_bytes: int = 0
    _file: BinaryIO | None = None
    _temp: Path | None = None
    _failed: bool = False

    async def add(self, chunk: AudioChunk) -> None:
        if self._failed or not chunk.data:
            return
        if self.format is None:
            self.format = chunk.format
        elif chunk.format != self.format:  # not one stream of samples: not an entry
            self._fail("the provider changed its audio format mid-stream")
            return
        first_sample = self.audio_bytes // _BYTES_PER_SAMPLE[chunk.format.encoding]
        self.marks.extend((chars, first_sample + sample) for chars, sample in chunk.marks)
        self.audio_bytes += len(chunk.data)
        self._pending.append(chunk.data)
        self._pending_bytes += len(chunk.data)
        if self._pending_bytes >= WRITE_BYTES:
            await self._write()

    async def _write(self, trailer: bytes = b"") -> None:
        data, self._pending, self._pending_bytes = b"".join(self._pending) + trailer, [], 0
        try:
            if self._file is None:
                self._temp = self.cache.directory / TEMP_DIR / f"{self.key}.{uuid.uuid4().hex[:8]}"
                self._file = await asyncio.to_thread(_create, self._temp)
            await asyncio.to_thread(self._file.write, data)
        except OSError as exc:
            self._fail(str(exc))

    async def commit(self) -> None:
        """The provider finished: the entry goes in place (if it has audio and nothing failed)."""
        if self._failed or self.format is None:
            self.discard()
            return
        trailer = json.dumps(
            {
                "key": self.key,
                "encoding": self.format.encoding,
                "sample_rate": self.format.sample_rate,
                "audio_bytes": self.audio_bytes,
                "marks": self.marks,
                **self.described,
            }
        ).encode()
        await self._write(trailer + FOOTER.pack(len(trailer), MAGIC))
        if self._failed or self._file is None or self._temp is None:
            self.discard()
            return
        file, self._file = self._file, None
        try:
            await asyncio.to_thread(file.close)
        except OSError as exc:
            self._fail(str(exc))
            return
        size = self.audio_bytes + len(trailer) + FOOTER.size
        if not await self.cache._commit(self.key, self._temp, size):
            self.discard()
        self._temp = None

    def discard(self) -> None:
        """Remove the temporary file (a flush, a failure): quick, safe to call twice."""
        self._pending, self._pending_bytes = [], 0
        file, self._file = self._file, None
        temp, self._temp = self._temp, None
        with contextlib.suppress(OSError):
            if file is not None:
                file.close()
            if temp is not None:
                temp.unlink(missing_ok=True)

    def _fail(self, reason: str) -> None:
        if not self._failed:
            log.warning("audio_cache_write_failed", key=self.key, error=reason, effect="not cached")
        self._failed = True
        self.discard()


# -- file work (in worker threads) ------------------------------------------------------------


def _create(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)  # (the directory may have been wiped under us)
    return open(path, "xb")


def _replace(victims: list[Path], temp: Path, final: Path) -> None:
    _unlink_all(victims)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temp, final)


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _open_entry(path: Path, key: str, touch: bool) -> _Opened:
    """The entry file open at its audio; ValueError if it is not a whole entry of ``key``."""
    file = open(path, "rb")  # noqa: SIM115 - returned open
    try:
        opened = _read_trailer(file, key)
        if touch:  # last used now (atime); written stays (mtime)
            stat = os.fstat(file.fileno())
            os.utime(file.fileno(), ns=(time.time_ns(), stat.st_mtime_ns))
    except BaseException:
        file.close()
        raise
    return opened


def _read_trailer(file: BinaryIO, key: str) -> _Opened:
    size = os.fstat(file.fileno()).st_size
    if size < FOOTER.size:
        raise ValueError("shorter than its footer")
    file.seek(size - FOOTER.size)
    trailer_bytes, magic = FOOTER.unpack(file.read(FOOTER.size))
    if magic != MAGIC or trailer_bytes > size - FOOTER.size:
        raise ValueError("not an audio cache entry of this version")
    file.seek(size - FOOTER.size - trailer_bytes)
    try:
        trailer = json.loads(file.read(trailer_bytes))
        audio_bytes = trailer["audio_bytes"]
        fmt = AudioFormat(trailer["encoding"], int(trailer["sample_rate"]))
        marks = [(int(chars), int(sample)) for chars, sample in trailer["marks"]]
        named = trailer["key"]
    except (KeyError, TypeError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise ValueError(f"its trailer does not parse: {exc!r}") from None
    if named != key or audio_bytes != size - FOOTER.size - trailer_bytes or fmt.encoding not in _ENCODINGS:
        raise ValueError("its trailer does not match the file")
    if fmt.sample_rate <= 0:
        raise ValueError("its sample rate is not a rate")
    file.seek(0)
    return _Opened(file, fmt, size, audio_bytes, marks)


async def _blocks(opened: _Opened) -> AsyncIterator[AudioChunk]:
    """An entry's audio in READ_BYTES blocks, each with the marks that fall in it."""
    width = _BYTES_PER_SAMPLE[opened.format.encoding]
    block = READ_BYTES - READ_BYTES % width
    marks, next_mark = opened.marks, 0
    position = 0
    try:
        while position < opened.audio_bytes:
            try:
                data = await asyncio.to_thread(opened.file.read, min(block, opened.audio_bytes - position))
            except OSError as exc:
                raise ProviderError(f"audio cache: reading an entry failed after {position} bytes: {exc}") from exc
            if not data:
                raise ProviderError(f"audio cache: an entry ended after {position} of {opened.audio_bytes} bytes")
            first, position = position // width, position + len(data)
            end = position // width if position < opened.audio_bytes else None  # the last block takes the rest
            taken = next_mark
            while next_mark < len(marks) and (end is None or marks[next_mark][1] < end):
                next_mark += 1
            in_block = tuple((chars, max(0, sample - first)) for chars, sample in marks[taken:next_mark])
            yield AudioChunk(data, opened.format, in_block)
    finally:
        opened.file.close()


def _duration_ms(audio_bytes: int, fmt: AudioFormat) -> int:
    return audio_bytes // _BYTES_PER_SAMPLE[fmt.encoding] * 1000 // fmt.sample_rate


# -- the adapter --------------------------------------------------------------------------------


async def _through(
    cache: AudioCache,
    provider: Provider,
    request: SynthesisRequest,
    synthesize: Callable[[SynthesisRequest], AsyncIterator[AudioChunk]],
    apart: Mapping[str, str],
) -> AsyncIterator[AudioChunk]:
    """``request``'s audio from the cache, else from ``synthesize`` (stored once it finished).
    ``apart``: what keys this way of synthesizing apart from a plain say."""
    if not request.cache:
        async with contextlib.aclosing(synthesize(request)) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                yield chunk
        return
    rendering = {**provider.rendering(request), **apart}
    key = cache_key(provider.name, rendering, request.text)
    blocks = await cache.read(key)
    if blocks is not None:
        async with contextlib.aclosing(blocks) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                yield chunk
        return
    writer = cache.writer(key, provider.name, rendering)
    try:
        async with contextlib.aclosing(synthesize(request)) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                yield chunk  # handed on first: the miss pays nothing for being stored
                await writer.add(chunk)
        await writer.commit()
    finally:
        writer.discard()  # cut, failed or flushed: no entry


class CachingProvider(DelegatingProvider):
    """A provider whose renderings are kept in ``cache`` and served from it."""

    def __init__(self, inner: Provider, cache: AudioCache) -> None:
        super().__init__(inner)
        self.cache = cache

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        async with contextlib.aclosing(_through(self.cache, self.inner, request, self.inner.synthesize, {})) as chunks:
            async for chunk in chunks:
                yield chunk

    def open_text_stream(self, language: str, voice_id: str, codec: Any, model: str = "") -> TextStream | None:
        stream = self.inner.open_text_stream(language, voice_id, codec, model)
        # None: each chunk through synthesize(), cached as a say is.
        return None if stream is None else CachingTextStream(stream, self.inner, self.cache)


class CachingTextStream(TextStream):
    """A speaking stream's provider connection whose chunks are cached one by one."""

    APART = {"input": "text_stream"}  # a chunk's prosody follows the chunks before it

    def __init__(self, inner: TextStream, provider: Provider, cache: AudioCache) -> None:
        self.inner = inner
        self.provider = provider
        self.cache = cache

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        through = _through(self.cache, self.provider, request, self.inner.synthesize, self.APART)
        async with contextlib.aclosing(through) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


async def open_cache(config: CacheConfig) -> AudioCache | None:
    """The daemon's cache as ``[cache]`` says; None when it is off, or its directory cannot be
    used (logged with the reason: speakd runs on without it)."""
    if not config.enabled:
        return None
    cache = AudioCache(config.dir, config.max_mb * 1024 * 1024, config.max_age)
    try:
        await cache.open()
    except OSError as exc:
        log.warning(
            "audio_cache_unavailable",
            directory=config.dir,
            error=str(exc),
            effect="every say asks its provider; fix [cache] dir or its permissions, or set [cache] enabled = false",
        )
        return None
    return cache


def clear_directory(directory: str | os.PathLike[str]) -> tuple[int, int]:
    """``speakd cache clear``: remove every entry file under ``directory`` (the daemon may run:
    its entries are misses from then on); (files, bytes) removed."""
    root = Path(directory)
    files = size = 0
    if not root.is_dir():
        return 0, 0
    for sub in root.iterdir():
        if not sub.is_dir() or sub.name == TEMP_DIR:
            continue
        for path in sub.iterdir():
            with contextlib.suppress(OSError):
                length = path.stat().st_size
                path.unlink()
                files, size = files + 1, size + length
    return files, size
