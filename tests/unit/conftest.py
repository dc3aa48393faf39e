"""The store's engines for its own tests (tests/harness/stores.py): one parametrized fixture,
and the session's PostgreSQL server under it."""

from harness.postgres import postgres, postgres_server  # noqa: F401 (fixtures)
from harness.stores import engine  # noqa: F401 (a fixture)
