"""What the store tells a node about the others, on both engines, for carrying requests to them
(speakd.sessions.peers): a live session's owner while its run is the node's current one, the
nodes seen lately with their url and Asterisk, and the node of a reference's last session.
And the pure routing: which node's Asterisk named a channel, and the order nodes are asked in."""

from __future__ import annotations

from speakd.sessions.peers import node_for_channel, search_rounds
from speakd.store.records import NOT_YET, NodeAddress, Owner, Speaking, Status

A = Owner("pbx-a", "run-a1")
B = Owner("pbx-b", "run-b1")
OLD = "2026-03-01 12:00:00.000000"
NEW = "2026-03-01 12:00:10.000000"


def _record(n: int, status: str = Status.ACTIVE, reference_id: str = "", stamp: str = "") -> Speaking:
    stamp = stamp or f"2026-03-0{n} 12:34:56.{n:06d}"
    return Speaking(
        id=f"s-{n}", customer_id="c", reference_type="call", reference_id=reference_id or f"chan-{n}",
        language="en-US", provider="piper", voice_id="", direction="out", status=status, tm_create=stamp,
        tm_update=stamp, tm_delete=NOT_YET,
    )  # fmt: skip


async def test_a_live_sessions_owner_is_its_nodes_current_run(engine):
    async with engine.store() as store:
        await store.register_node(A, "http://a:8080", NEW)
        await store.register_node(B, "http://b:8080", NEW)
        await store.set_node_asterisk(B, "pbx-b-ast")
        await store.insert(_record(1), B, "chan-1")
        await store.insert(_record(2, Status.STOPPED), B, "chan-2")
        assert await store.live_owner("s-1") == NodeAddress("pbx-b", "http://b:8080", "pbx-b-ast")
        assert await store.live_owner("s-2") is None  # stopped: any node answers from the store
        assert await store.live_owner("s-none") is None
        # The node restarted (a new run): what its last run left is no one's to carry to.
        await store.register_node(Owner("pbx-b", "run-b2"), "http://b:8080", NEW)
        assert await store.live_owner("s-1") is None


async def test_nodes_seen_since_with_their_asterisk(engine):
    async with engine.store() as store:
        await store.register_node(A, "http://a:8080", NEW)
        await store.register_node(B, "http://b:8080", OLD)
        assert await store.nodes_seen_since(OLD) == [NodeAddress("pbx-a", "http://a:8080", "")]
        await store.set_node_asterisk(A, "ast-a")
        await store.set_node_asterisk(Owner("pbx-b", "run-b0"), "stale")  # an old run's: not written
        assert await store.nodes_seen_since("2000-01-01 00:00:00.000000") == [
            NodeAddress("pbx-a", "http://a:8080", "ast-a"),
            NodeAddress("pbx-b", "http://b:8080", ""),
        ]
        # An ARI reconnect to an Asterisk without a system name writes it empty again.
        await store.set_node_asterisk(A, "")
        assert (await store.nodes_seen_since(OLD))[0].asterisk == ""


async def test_a_references_last_node_is_its_newest_sessions(engine):
    async with engine.store() as store:
        assert await store.last_node_of("call", "room") == ""
        await store.insert(_record(1, Status.STOPPED, "room", "2026-03-01 10:00:00.000000"), A, "room")
        await store.insert(_record(2, Status.STOPPED, "room", "2026-03-01 11:00:00.000000"), B, "room")
        await store.insert(_record(3, Status.STOPPED, "other", "2026-03-01 12:00:00.000000"), A, "other")
        assert await store.last_node_of("call", "room") == "pbx-b"
        assert await store.last_node_of("confbridge", "room") == ""


NODES = [
    NodeAddress("a", "http://a", ""),
    NodeAddress("b", "http://b", "pbx"),
    NodeAddress("c", "http://c", "pbx-2"),
]


def test_a_channel_goes_to_the_node_whose_asterisk_named_it():
    assert node_for_channel("pbx-1701354000.12", NODES) == NODES[1]
    assert node_for_channel("pbx-2-1701354000.12", NODES) == NODES[2]  # the longest name that leads it
    assert node_for_channel("pbx2-1701354000.12", NODES) is None  # a name is followed by '-'
    assert node_for_channel("pbx", NODES) is None
    assert node_for_channel("1701354000.12", NODES) is None  # an Asterisk without a name: no node's
    assert node_for_channel("-1701354000.12", NODES) is None  # '' names nothing


def test_a_reference_is_looked_for_on_its_last_node_first_then_on_the_others_at_once():
    assert search_rounds(NODES, "a", "c") == [[NODES[2]], [NODES[1]]]
    assert search_rounds(NODES, "a", "") == [[NODES[1], NODES[2]]]
    assert search_rounds(NODES, "a", "a") == [[NODES[1], NODES[2]]]  # its last node is this one: asked already
    assert search_rounds(NODES, "a", "gone") == [[NODES[1], NODES[2]]]
    assert search_rounds(NODES[:1], "a", "") == []
