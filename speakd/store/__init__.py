"""Session records: SQLite, the embedded default."""

from speakd.store.sqlite import SqliteStore

__all__ = ["SqliteStore"]
