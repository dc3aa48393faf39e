"""Driving speakd from the Asterisk dialplan over FastAGI (docs/ways-in.md, "From the dialplan")."""

from speakd.agi.scripts import AgiScripts
from speakd.agi.server import AgiServer

__all__ = ["AgiScripts", "AgiServer"]
