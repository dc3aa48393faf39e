"""Speaking events and the ways they leave speakd."""

from speakd.events.bus import EventBus, EventSink
from speakd.events.model import Event, EventType, InterruptReason, StopReason

__all__ = ["Event", "EventBus", "EventSink", "EventType", "InterruptReason", "StopReason"]
