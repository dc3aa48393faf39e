"""[node]: this speakd's id and the URL other nodes reach it at, from the file or SPEAKD_NODE_*,
with defaults from the host and [server]; bad values are named with every other problem."""

from __future__ import annotations

import socket

import pytest

from speakd.config import ConfigError, load_config, read_config


def test_defaults_are_the_host_name_and_the_servers_address():
    config = load_config(None, environ={"SPEAKD_SERVER_HOST": "10.1.2.3", "SPEAKD_SERVER_PORT": "9001"})
    assert config.node.id == socket.gethostname()
    assert config.node.url_with(config.server) == "http://10.1.2.3:9001"


@pytest.mark.parametrize(("host", "shown"), [("0.0.0.0", None), ("::", None), ("::1", "[::1]")])
def test_a_wildcard_host_is_replaced_by_the_host_name_and_ipv6_is_bracketed(host, shown):
    config = load_config(None, environ={"SPEAKD_SERVER_HOST": host})
    assert config.node.url_with(config.server) == f"http://{shown or socket.gethostname()}:8090"


def test_file_then_environment(tmp_path):
    path = tmp_path / "speakd.toml"
    path.write_text('[node]\nid = "pbx-1"\nurl = "https://pbx-1.example:8443"\n')
    config = load_config(path, environ={})
    assert (config.node.id, config.node.url_with(config.server)) == ("pbx-1", "https://pbx-1.example:8443")
    config = load_config(path, environ={"SPEAKD_NODE_ID": "pbx_2.b", "SPEAKD_NODE_URL": "http://10.0.0.2:8090"})
    assert (config.node.id, config.node.url) == ("pbx_2.b", "http://10.0.0.2:8090")


@pytest.mark.parametrize(
    "env",
    [
        {"SPEAKD_NODE_ID": "pbx 1"},
        {"SPEAKD_NODE_ID": ""},
        {"SPEAKD_NODE_ID": "x" * 65},
        {"SPEAKD_NODE_URL": "pbx-1:8090"},
        {"SPEAKD_NODE_URL": "ftp://pbx-1:8090"},
        {"SPEAKD_NODE_URL": "http://pbx-1"},  # the port is not guessed
        {"SPEAKD_NODE_URL": "http://pbx-1:99999"},
        {"SPEAKD_NODE_URL": "http://:8090"},
    ],
)
def test_a_bad_id_or_url_is_named(env):
    ((variable, value),) = env.items()
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ=env)
    (problem,) = caught.value.problems
    key = variable.removeprefix("SPEAKD_").lower().replace("_", ".", 1)
    assert problem.startswith(f"{key} must be") and repr(value) in problem


def test_node_problems_are_collected_with_the_others():
    reading = read_config(None, environ={"SPEAKD_NODE_ID": "a b", "SPEAKD_NODE_URL": "x", "SPEAKD_SERVER_NICE": "99"})
    assert [p.split(" ")[0] for p in reading.problems] == ["server.nice", "node.id", "node.url"]


def test_check_config_shows_the_url_the_node_will_use():
    from speakd.config_check import redacted

    config = load_config(None, environ={"SPEAKD_SERVER_HOST": "0.0.0.0", "SPEAKD_NODE_ID": "pbx-1"})
    assert redacted(config)["node"] == {"id": "pbx-1", "url": f"http://{socket.gethostname()}:8090"}
