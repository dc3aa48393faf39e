"""The node registry on both engines (registered at start, a heartbeat while it runs that ends
with it, another run of the same id noticed, nodes listed as the API shows them), and the node
id on every log line (also of tasks started in a context of their own) and in the metrics."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from speakd.logging import configure_logging
from speakd.metrics import Metrics
from speakd.sessions import nodes
from speakd.sessions.nodes import NodeRegistry
from speakd.store.records import Speaking, Status


def _record(n: int) -> Speaking:
    stamp = f"2026-03-0{n} 12:34:56.000000"
    return Speaking(
        id=f"s-{n}", customer_id="c", reference_type="call", reference_id=f"chan-{n}", language="en-US",
        provider="piper", voice_id="", direction="out", status=Status.ACTIVE, tm_create=stamp, tm_update=stamp,
    )  # fmt: skip


async def test_a_node_registers_beats_and_stops_beating_when_it_ends(engine, monkeypatch):
    monkeypatch.setattr(nodes, "HEARTBEAT_S", 0.05)
    async with engine.store() as store:
        async with NodeRegistry(store, "pbx-1", "http://pbx-1:8090") as registry:
            await store.insert(_record(1), registry.owner, "chan-1")
            (listed,) = await registry.nodes()
            assert listed["id"] == "pbx-1" and listed["url"] == "http://pbx-1:8090" and listed["live_sessions"] == 1
            first_seen = listed["tm_last_seen"]
            await asyncio.sleep(0.3)
            (listed,) = await registry.nodes()
            assert listed["tm_last_seen"] > first_seen  # the heartbeat wrote it
            heartbeat = registry._heartbeat
        assert heartbeat is not None and heartbeat.done()  # ended with the registry, before the store closed
        (ended,) = await registry.nodes()
        await asyncio.sleep(0.2)
        assert await registry.nodes() == [ended]
    assert await engine.rows("SELECT run_id FROM nodes") == [(registry.owner.run_id,)]


async def test_a_restarted_node_is_a_new_run_and_the_old_one_says_its_id_is_taken(engine, monkeypatch):
    monkeypatch.setattr(nodes, "HEARTBEAT_S", 0.05)
    async with engine.store() as store:
        with capture_logs() as logs:
            # The second registers after the first: it takes the row over.
            async with (
                NodeRegistry(store, "pbx-1", "http://a:1") as first,
                NodeRegistry(store, "pbx-1", "http://b:2") as second,
            ):
                assert first.owner.run_id != second.owner.run_id
                await asyncio.sleep(0.3)
                (listed,) = await second.nodes()
                assert listed["url"] == "http://b:2"
        taken = [entry for entry in logs if entry["event"] == "node_id_taken"]
        assert len(taken) == 1 and "its own [node] id" in taken[0]["error"]  # once, not at every beat


async def test_the_heartbeat_outlives_a_store_that_refuses_writes(engine, monkeypatch):
    monkeypatch.setattr(nodes, "HEARTBEAT_S", 0.05)
    async with engine.store() as store:
        with capture_logs() as logs:
            async with NodeRegistry(store, "pbx-1", "http://pbx-1:8090") as registry:
                await engine.refuse_writes(store)
                await asyncio.sleep(0.3)
                (refused,) = await registry.nodes()
                await engine.refuse_writes(store, on=False)
                await asyncio.sleep(0.3)
                (written,) = await registry.nodes()
                assert written["tm_last_seen"] > refused["tm_last_seen"]
                assert not registry._heartbeat.done()  # type: ignore[union-attr]
        events = [entry["event"] for entry in logs if entry["event"].startswith("node_heartbeat")]
        assert events == ["node_heartbeat_failed", "node_heartbeat_written"]  # once each, not at every beat


@pytest.fixture
def restore_logging():
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_every_log_line_names_the_node(capsys, restore_logging):
    logging.getLogger().handlers.clear()  # as in speakd's process: the standard library's lines go to stderr
    configure_logging("info", "json", node_id="pbx-7")
    log = structlog.get_logger("speakd.test")
    log.info("from_the_daemon")
    # A session's tasks run in a context of their own (no bound variables): the node is still named.
    contextvars.Context().run(log.info, "from_a_session", speaking_id="s")
    logging.getLogger("asyncpg.pool").warning("a library's line")
    *lines, library = capsys.readouterr().err.splitlines()
    assert [(json.loads(line)["event"], json.loads(line)["node_id"]) for line in lines] == [
        ("from_the_daemon", "pbx-7"), ("from_a_session", "pbx-7"),
    ]  # fmt: skip
    assert library == "WARNING asyncpg.pool node_id=pbx-7 a library's line"


def test_the_metrics_name_the_node():
    metrics = Metrics("pbx-7", "http://pbx-7:8090")
    body, _ = metrics.exposition("")
    families = text_string_to_metric_families(body.decode())
    (sample,) = [s for family in families for s in family.samples if s.name.startswith("speakd_node")]
    assert (sample.name, sample.labels, sample.value) == (
        "speakd_node_info", {"node_id": "pbx-7", "url": "http://pbx-7:8090"}, 1.0,
    )  # fmt: skip
