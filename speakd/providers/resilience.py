"""The failure behaviour every cloud provider shares (:func:`resilient_stream`): first-byte
timeout, one retry while nothing has been yielded, a stall timeout between chunks, and a
:class:`~speakd.errors.ProviderError` with a clear message for anything else. Audio already
yielded is never replayed. A voice list that fails says so alike (:func:`listing_voices`).

Nothing here imports a provider SDK: each provider classifies its own SDK's errors into a
:class:`Failure`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import structlog

from speakd.audio import AudioFormat
from speakd.errors import ProviderError
from speakd.providers.base import AudioChunk
from speakd.providers.settings import Timeouts

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Failure:
    message: str
    retryable: bool


class ConnectTimeout(Exception):
    """Raised by a provider attempt when the connection could not be opened in time."""


def credentials_rejected(provider: str, detail: str) -> Failure:
    return Failure(f"{provider}: the credentials were rejected by the provider ({detail})", retryable=False)


async def resilient_stream(
    provider: str,
    attempt: Callable[[], AsyncIterator[bytes | AudioChunk]],
    classify: Callable[[BaseException], Failure],
    timeouts: Timeouts,
    fmt: AudioFormat,
) -> AsyncIterator[AudioChunk]:
    """Yield the audio of ``attempt()`` with speakd's failure behaviour, as AudioChunks.

    ``attempt`` opens one request and iterates its audio; it runs in the caller's task (no
    helper tasks, so SDKs that bind state to a task are safe). Before the first byte, a timeout
    or a retryable failure opens one new request (``timeouts.retries``); after it, any failure
    or a stall longer than ``timeouts.read`` ends the stream with a ProviderError saying it was
    cut off — what was yielded is never sent again. Cancellation propagates and closes the
    request. ``attempt`` yields raw audio in ``fmt``, or AudioChunks (with word marks) of it.
    """
    failures: list[str] = []
    for number in range(1, timeouts.retries + 2):
        stream = attempt()
        failure: Failure | None = None
        yielded = 0
        try:
            try:
                async with asyncio.timeout(timeouts.first_byte):
                    first = await anext(stream)
            except StopAsyncIteration:
                failure = Failure(f"{provider}: the provider returned no audio", retryable=False)
            except TimeoutError:
                failure = Failure(
                    f"{provider}: no audio within the first-byte timeout of {timeouts.first_byte:g} s",
                    retryable=True,
                )
            except ConnectTimeout as exc:
                failure = Failure(
                    f"{provider}: could not connect within {timeouts.connect:g} s ({exc})", retryable=True
                )
            except Exception as exc:
                failure = classify(exc)
            if failure is None:
                first = _chunk(first, fmt)
                yielded = len(first.data)
                yield first
                while True:
                    try:
                        async with asyncio.timeout(timeouts.read):
                            chunk = await anext(stream)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        raise ProviderError(
                            f"{provider}: the audio stream stalled for {timeouts.read:g} s after "
                            f"{yielded} bytes and was abandoned"
                        ) from None
                    except Exception as exc:
                        detail = classify(exc).message.removeprefix(f"{provider}: ")
                        raise ProviderError(
                            f"{provider}: the audio stream was cut off after {yielded} bytes: {detail}"
                        ) from exc
                    chunk = _chunk(chunk, fmt)
                    if chunk.data:
                        yielded += len(chunk.data)
                        yield chunk
        finally:
            await _close_quietly(provider, stream)
        failures.append(failure.message)
        if not failure.retryable or number > timeouts.retries:
            break
        log.warning("provider_retry", provider=provider, attempt=number, reason=failure.message)
    message = failures[-1]
    if len(failures) > 1:
        message += f" (tried {len(failures)} times)"
    raise ProviderError(message)


def _chunk(item: bytes | AudioChunk, fmt: AudioFormat) -> AudioChunk:
    return item if isinstance(item, AudioChunk) else AudioChunk(item, fmt)


async def _close_quietly(provider: str, stream: AsyncIterator[bytes | AudioChunk]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.debug("provider_stream_close_failed", provider=provider, error=repr(exc))


@contextlib.contextmanager
def listing_voices(provider: str, classify: Callable[[BaseException], Failure]) -> Iterator[None]:
    """Around a provider's voice-list call: any failure a ProviderError saying the listing failed."""
    try:
        yield
    except ConnectTimeout as exc:
        raise ProviderError(f"{provider}: listing voices failed: could not connect: {exc}") from exc
    except Exception as exc:
        raise ProviderError(f"{provider}: listing voices failed: {classify(exc).message}") from exc


def http_failure(provider: str, status: int | None, detail: str) -> Failure:
    """Failure for an HTTP status from a provider (auth, throttling, server errors)."""
    if status in (401, 403):
        return credentials_rejected(provider, f"HTTP {status}: {detail}")
    if status is not None and (status >= 500 or status in (408, 429)):
        return Failure(f"{provider}: the provider failed with HTTP {status}: {detail}", retryable=True)
    return Failure(f"{provider}: the provider refused the request with HTTP {status}: {detail}", retryable=False)
