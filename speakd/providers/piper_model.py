"""A Piper voice's ONNX model, cut in memory so a sentence's audio leaves window by window.

Piper's model is VITS: a text encoder and a duration predictor turn a sentence's phoneme ids into
``z_p`` (one frame per ``hop`` output samples, 256 for Piper's medium voices), a flow turns that
into the latent ``z``, and a HiFi-GAN decoder turns ``z`` into audio. The decoder is most of the
work (about three quarters of a sentence's time here), and the flow and the decoder are
convolutional: an output depends on their input only a few frames either side. So the graph is
cut where the flow and the decoder begin (:class:`PiperModel`): the front runs once per sentence,
then each window of the sentence (:func:`windows`) is decoded from its frames of ``z`` with
:data:`CONTEXT_FRAMES` more either side whose audio is dropped. Measured on Joe (medium): with 12
frames of context a window's audio equals the whole-sentence decode to 1e-6 (8 frames: 1e-3,
4 frames: 3e-2, an audible seam), so the windows join without a seam.

Decoding in windows also bounds the decoder's working memory by the window, not the sentence
(a whole 20 s sentence needs hundreds of MB of intermediate tensors at the audio rate).

A model whose graph is not cut this way (another architecture) runs whole: :attr:`PiperModel.decoder`
is None and :meth:`PiperModel.front` returns the sentence's audio, logged once at load.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

log = structlog.get_logger(__name__)

# Frames of z decoded either side of a window and dropped (the decoder's reach, see above).
CONTEXT_FRAMES = 12
# Frames of the flow's input run either side of what the decoder needs (its reach: 24 frames gave
# 4e-5 of z, 16 frames 3e-2).
FLOW_CONTEXT_FRAMES = 24
# The first window is small so its audio leaves early: 13 frames (151 ms at 22.05 kHz), or 19
# (221 ms) where a sentence's first step is expected to take longer than the smaller one's audio
# lets a session start at once (piper.PiperProvider.first_window). Sizes where the session's 8 kHz
# resampler (soxr HQ, which gives audio out in blocks of 67.5 ms) gives nearly all of it at once:
# 135 and 202 ms (12 frames: 67 ms, the rest held back until more comes). What the session gets
# must outlast the wait for the second window by its margin, or it holds the say: each next window
# is three times larger (four made the second step take 95 ms in the daemon, against the 120 ms of
# whole 20 ms frames the smaller first window gives), up to the last size (0.74 s). The first two
# windows run the flow over their own frames (the sentence's whole z, made for the second, took a
# long sentence's second step 116 ms); the next ones read the sentence's whole z, made once.
# The last size bounds a run's working memory, which grows with the window (the decoder's last
# stage: 32 channels at the audio rate): two syntheses at once (one per core) peak at about 60 MB
# with 64 frames, 76 MB with 100; the context is a larger share of a smaller window, but smaller
# tensors stay in cache: CPU per second of audio +2 % one at a time, +1-6 % two (docs/speed.md).
FIRST_WINDOW_FRAMES = (13, 19)
LAST_WINDOW_FRAMES = 64
GROWTH = 3
# What a run costs, in frames decoded (the decoder's time per frame, about 0.33 ms on one core
# here): the front 0.35 a phoneme id, the flow 0.2 a frame (measured on Joe, 27-349 ids). A
# sentence has about 2 frames of z per phoneme id.
FRONT_COST_PER_ID = 0.35
FLOW_COST_PER_FRAME = 0.2
FRAMES_PER_ID = 2
# The name scopes of the flow's and the decoder's nodes in Piper's exported graphs.
FLOW_PREFIX, DECODER_PREFIX = "/flow/", "/dec/"


def windows(frames: int, first: int) -> Iterator[tuple[int, int]]:
    """The ``[start, end)`` frame windows of a sentence of ``frames`` frames of z, the first
    ``first`` frames long."""
    start, size = 0, first
    while start < frames:
        end = min(frames, start + size)
        if frames - end < first:  # no small last window: its context would cost more
            end = frames
        yield start, end
        start, size = end, min(GROWTH * size, LAST_WINDOW_FRAMES)


@dataclass(slots=True)
class Front:
    """What the front of the model made of one sentence."""

    latent: list[np.ndarray]  # what the decoding of a window reads, each [1, channels, frames]
    frames_per_id: np.ndarray | None  # frames each phoneme id lasts (None: the model does not say)
    audio: np.ndarray | None = None  # the whole sentence's audio, from a model that runs whole
    z: np.ndarray | None = None  # the sentence's z, once made from latent by the flow (latent dropped)
    frames: int = 0  # frames of z
    first_window: int = FIRST_WINDOW_FRAMES[0]  # its windows: see windows()

    def windowed_flow(self, start: int) -> bool:
        """Whether the window from frame ``start`` runs the flow over its own frames (the first two)."""
        return self.z is None and start < self.first_window * (1 + GROWTH)


class PiperModel:
    """One voice's ONNX sessions, shared by every session of the daemon (onnxruntime's ``run`` is
    thread-safe). Only the sessions are kept: the model's proto and bytes are dropped once they
    are made.

    Cut in three where the graph allows: ``front`` (ids -> the flow's input ``z_p`` and its mask,
    the durations), ``flow`` (-> ``z``, also convolutional: run over a window with
    :data:`FLOW_CONTEXT_FRAMES` more either side), ``decoder``; else in two (the flow in the front:
    it runs over the whole sentence before its first window, 20 ms of a 75-character sentence's
    first 50 ms); else whole."""

    def __init__(self, path: str, options: Any) -> None:
        self.alignments = False  # the front also says how long each phoneme id lasts
        self.inputs: list[str] = []  # the model's (``sid`` among them: a voice of several speakers)
        self.flow: Any = None
        self.decoder: Any = None
        self.hop = 0
        self._flow_inputs: list[str] = []
        self._z = ""
        self._make_sessions(path, options)
        return_freed_heap()

    def _make_sessions(self, path: str, options: Any) -> None:
        import onnx
        import onnxruntime

        model = onnx.load(path)
        self.alignments = _add_alignment_output(model)
        self.inputs = [i.name for i in model.graph.input]
        session = functools.partial(
            onnxruntime.InferenceSession, sess_options=options, providers=["CPUExecutionProvider"]
        )
        try:
            parts = _split(model)
            self._flow_inputs, self._z = parts.flow_inputs, parts.z
            self.front_session = session(parts.front.SerializeToString())
            if parts.flow is not None:
                self.flow = session(parts.flow.SerializeToString())
            self.decoder = session(parts.decoder.SerializeToString())
            self.hop = self._measure_hop(parts.decoder)
        except Exception as exc:  # another graph: whole sentences, as Piper runs them
            log.warning(
                "piper_whole_sentences", model=path, reason=str(exc), effect="no audio before a sentence is whole"
            )
            self.flow = self.decoder = None
            self.front_session = session(model.SerializeToString())

    def _measure_hop(self, decoder: Any) -> int:
        """Output samples per frame of z: decode 4 frames of zeros (also checks the decoder runs)."""
        z = np.zeros((1, _z_channels(decoder, self._z), 4), dtype=np.float32)
        audio = self.decoder.run(None, {self._z: z})[0].reshape(-1)
        if len(audio) % 4 or not audio.size:
            raise ValueError(f"the decoder made {len(audio)} samples of 4 frames")
        return len(audio) // 4

    def front(self, feeds: dict[str, np.ndarray], first_window: int) -> Front:
        outputs = self.front_session.run(None, feeds)
        if self.decoder is None:
            frames = outputs[1].reshape(-1) if len(outputs) > 1 and self.alignments else None
            return Front([], frames, outputs[0].reshape(-1))
        held = len(self._flow_inputs) or 1  # z_p and its mask, or z
        durations = outputs[held].reshape(-1) if len(outputs) > held and self.alignments else None
        return Front(outputs[:held], durations, frames=outputs[0].shape[2], first_window=first_window)

    def decode(self, front: Front, start: int, end: int) -> np.ndarray:
        """Audio of frames ``[start, end)`` of a sentence (float, about -1 to 1): its z decoded with
        :data:`CONTEXT_FRAMES` either side. The z of the first two windows comes from the flow
        run over that window with :data:`FLOW_CONTEXT_FRAMES` more either side (their audio
        leaves sooner); the next windows read the sentence's whole z, made once (no context run
        over and over)."""
        frames = front.frames
        low, high = max(0, start - CONTEXT_FRAMES), min(frames, end + CONTEXT_FRAMES)
        made_z = False
        if self.flow is None:
            z = front.latent[0][:, :, low:high]
        elif front.windowed_flow(start):
            flow_low, flow_high = self._flow_span(frames, low, high)
            z = self._flow(front, flow_low, flow_high)[:, :, low - flow_low : high - flow_low]
        else:
            if front.z is None:
                front.z = self._flow(front, 0, frames)
                front.latent = []  # read by the flow only: a paused sentence holds z alone
                made_z = True
            z = front.z[:, :, low:high]
        audio = self.decoder.run(None, {self._z: z})[0].reshape(-1)
        if made_z:  # z, made last, sits above the flow's freed tensors in the heap and pins them
            return_freed_heap()  # until the sentence ends: given back now (once a sentence)
        return audio[(start - low) * self.hop : (end - low) * self.hop]

    def start_cost(self, ids: int, first_window: int) -> float:
        """What running the front over ``ids`` phoneme ids and decoding a first window of
        ``first_window`` frames costs (the sentence's frames estimated from its ids)."""
        if self.decoder is None:  # the whole sentence
            return ids * (FRONT_COST_PER_ID + FRAMES_PER_ID * (1 + FLOW_COST_PER_FRAME))
        frames = FRAMES_PER_ID * ids
        front = Front([], None, frames=frames, first_window=first_window)
        return ids * FRONT_COST_PER_ID + self.decode_cost(front, 0, min(frames, first_window))

    def decode_cost(self, front: Front, start: int, end: int) -> float:
        """What :meth:`decode` of frames ``[start, end)`` costs."""
        frames = front.frames
        low, high = max(0, start - CONTEXT_FRAMES), min(frames, end + CONTEXT_FRAMES)
        flowed = 0
        if self.flow is not None and front.z is None:
            if front.windowed_flow(start):
                flow_low, flow_high = self._flow_span(frames, low, high)
                flowed = flow_high - flow_low
            else:
                flowed = frames
        return high - low + FLOW_COST_PER_FRAME * flowed

    @staticmethod
    def _flow_span(frames: int, low: int, high: int) -> tuple[int, int]:
        """The frames the flow runs over for the decoder to read ``[low, high)`` of z."""
        return max(0, low - FLOW_CONTEXT_FRAMES), min(frames, high + FLOW_CONTEXT_FRAMES)

    def _flow(self, front: Front, low: int, high: int) -> np.ndarray:
        feeds = {name: x[:, :, low:high] for name, x in zip(self._flow_inputs, front.latent, strict=True)}
        return self.flow.run(None, feeds)[0]


def return_freed_heap() -> None:
    """Give freed heap back to the system: glibc keeps it for reuse unless asked (measured: 309 MB
    resident after loading the model, 222 MB after; called again after each sentence)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)


def _add_alignment_output(model: Any) -> bool:
    """Also output how many frames each phoneme id lasts (Piper's own patch, in memory): word
    marks then say exactly what a cut say had played. False if the model cannot."""
    try:
        from piper.patch_voice_with_alignment import add_alignment_output

        add_alignment_output(model)
    except ValueError as exc:
        if "already marked" in str(exc):  # patched on disk
            return True
        log.warning("piper_no_alignments", reason=str(exc), effect="what a cut say played is estimated")
        return False
    return True


@dataclass(slots=True)
class _Parts:
    front: Any
    flow: Any  # None: the flow is in the front
    decoder: Any
    flow_inputs: list[str]  # the flow's (z_p and its mask), as the front outputs them
    z: str  # the decoder's input


def _split(model: Any) -> _Parts:
    """The model cut where its flow and its decoder begin (or only the decoder)."""
    import onnx.utils

    graph = model.graph
    z = _entering(graph, DECODER_PREFIX)
    if len(z) != 1:
        raise ValueError(f"no single tensor enters the decoder ({DECODER_PREFIX}*): {z[:4]}")
    outputs = [o.name for o in graph.output]
    audio, aligned = outputs[0], outputs[1:]
    extractor = onnx.utils.Extractor(model)
    decoder = extractor.extract_model(z, [audio])
    if [i.name for i in decoder.graph.input] != z:
        raise ValueError("the decoder needs more than z")
    # The flow's own inputs: what its nodes read from named (``/``) nodes outside it (its coupling
    # layers' inner nodes have no scope).
    made_by = {o: n.name for n in graph.node for o in n.output}
    flow_in = [t for t in _entering(graph, FLOW_PREFIX) if made_by.get(t, "").startswith("/")]
    if flow_in:
        try:
            flow = extractor.extract_model(flow_in, z)
            if sorted(i.name for i in flow.graph.input) == flow_in:
                front = extractor.extract_model([i.name for i in graph.input], [*flow_in, *aligned])
                return _Parts(front, flow, decoder, flow_in, z[0])
        except Exception as exc:  # the flow in the front, then
            log.info("piper_flow_in_front", reason=str(exc))
    front = extractor.extract_model([i.name for i in graph.input], [*z, *aligned])
    return _Parts(front, None, decoder, [], z[0])


def _entering(graph: Any, prefix: str) -> list[str]:
    """The tensors the nodes of a name scope read from outside it (weights aside), sorted."""
    constants = {i.name for i in graph.initializer}
    nodes = [n for n in graph.node if n.name.startswith(prefix)]
    made = {o for n in nodes for o in n.output}
    return sorted({i for n in nodes for i in n.input if i and i not in made and i not in constants})


def _z_channels(decoder: Any, z: str) -> int:
    """The channels of z: the input channels of the decoder's first convolution."""
    weights = {i.name: i for i in decoder.graph.initializer}
    for node in decoder.graph.node:
        if z in node.input and node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in weights:
            return int(weights[node.input[1]].dims[1])
    raise ValueError("the decoder does not begin with a convolution of z")
