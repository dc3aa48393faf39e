"""Two leaks in piper-tts's espeak-ng bridge (``piper.espeakbridge``, 1.8.0), stopped where Piper calls it.

Piper phonemizes a text by calling ``set_voice`` and then ``get_phonemes``. Both leak, for the
life of the process:

- ``set_voice`` makes espeak-ng load the voice again on every call, which keeps about 1.3 kB.
- ``get_phonemes`` returns each clause's tuple with one reference too many, so the tuple and its
  strings are never freed (about 0.4 kB a clause).

speakd phonemizes every say twice (its text, then its words alone for word marks), so a daemon
grew by about 2.5 kB a say: 3.8 MB over a soak of 1,000 says, 0.25 GB a day at 100,000 says.

:func:`stop_leaks` wraps both, once per process:

- The voice is set only when it changes. Piper calls the bridge under its own lock, so the
  voice last set is the voice espeak-ng has.
- A clause's extra reference is dropped only when its count shows it. The count is compared with
  that of a tuple made here and read the same way, so a bridge that has been fixed is left alone.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

_stopped = False


def stop_leaks() -> None:
    """Wrap ``piper.espeakbridge``'s ``set_voice`` and ``get_phonemes`` (idempotent)."""
    global _stopped
    if _stopped:
        return
    from piper import espeakbridge

    espeakbridge.set_voice = _set_only_changes(espeakbridge.set_voice)
    espeakbridge.get_phonemes = _freeing_clauses(espeakbridge.get_phonemes, _held_references())
    _stopped = True


def _set_only_changes(set_voice: Callable[[str], None]) -> Callable[[str], None]:
    current: str | None = None

    def set_voice_once(name: str) -> None:
        nonlocal current
        if name != current:
            set_voice(name)
            current = name

    return set_voice_once


def _freeing_clauses(get_phonemes: Callable[[str], list[Any]], held: int) -> Callable[[str], list[Any]]:
    decref = ctypes.pythonapi.Py_DecRef
    decref.argtypes = [ctypes.py_object]
    decref.restype = None

    def get_phonemes_freed(text: str) -> list[Any]:
        clauses = get_phonemes(text)
        for clause in clauses:
            if sys.getrefcount(clause) == held + 1:  # the bridge's own reference, never dropped
                decref(clause)
        return clauses

    return get_phonemes_freed


def _held_references() -> int:
    """The reference count a clause held only by its list reads in ``get_phonemes_freed``'s loop."""
    clauses = [tuple(["".join(("p", "h")), ".", True])]  # made at run time, as the bridge's are
    count = 0
    for clause in clauses:
        count = sys.getrefcount(clause)
    return count
