"""Session records: one interface (:class:`Store`), two engines: SQLite (``[store] path``, the
embedded default) and PostgreSQL (``[store] url``). :func:`open_store` picks one from the config."""

from __future__ import annotations

from speakd.config import StoreConfig
from speakd.store.interface import Store, StoreNotOpened, StoreRefused, StoreUnwritable

__all__ = ["Store", "StoreNotOpened", "StoreRefused", "StoreUnwritable", "open_store"]


def open_store(config: StoreConfig) -> Store:
    """The store the config names, to be opened with ``async with``."""
    if config.url:
        from speakd.store.postgres import PostgresStore  # the driver is loaded only when used

        return PostgresStore(config.url)
    from speakd.store.sqlite import SqliteStore

    return SqliteStore(config.path)
