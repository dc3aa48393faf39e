"""speakd: speak text-to-speech into live Asterisk calls and conferences."""

__version__ = "0.1.0"
