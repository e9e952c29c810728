"""The config's ``agent`` section and ``kube_context`` (mirrord's names)."""

from __future__ import annotations

import pytest

from waylay.core.engine.config import DEFAULT_AGENT_IMAGE, parse_config
from waylay.core.engine.errors import ConfigError


def test_defaults() -> None:
    config = parse_config("{}", fmt="json")
    assert config.agent.image == DEFAULT_AGENT_IMAGE
    assert (config.agent.ephemeral, config.agent.ttl, config.kube_context) == (True, 30, None)


def test_mirrord_agent_section_loads_and_the_rest_is_ignored() -> None:
    text = """{
      "kube_context": "staging",
      "agent": {"image": {"registry": "ghcr.io/me/waylay-agent", "tag": "0.1"},
                "namespace": "tools", "ttl": 60, "startup_timeout": 120,
                "ephemeral": false, "log_level": "debug",},
    }"""
    config = parse_config(text, fmt="json", source="m.json")
    assert config.kube_context == "staging"
    agent = config.agent
    assert (agent.image, agent.namespace, agent.ttl, agent.startup_timeout, agent.ephemeral) == (
        "ghcr.io/me/waylay-agent:0.1", "tools", 60, 120, False)
    assert config.warnings == ()


@pytest.mark.parametrize(("text", "message"), [
    ('{"agent": {"ttl": -1}}', "agent.ttl: expected whole seconds"),
    ('{"agent": {"local_response_timeout": 0}}',
     "agent.local_response_timeout: expected whole seconds 1..86400, got 0"),
    ('{"agent": {"local_response_timeout": 2.5}}',
     "agent.local_response_timeout: expected whole seconds 1..86400, got 2.5"),
    ('{"agent": {"local_response_timeout": "60s"}}',
     "agent.local_response_timeout: expected whole seconds 1..86400, got a string"),
    ('{"agent": {"ephemeral": "yes"}}', "agent.ephemeral: expected true or false"),
    ('{"agent": {"image": ""}}', "agent.image: empty string"),
    ('{"agent": []}', "agent: expected an object"),
])
def test_bad_values_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, fmt="json", source="m.json")


def test_flags_win_over_the_file() -> None:
    config = parse_config('{"kube_context": "a", "target": {"namespace": "x"}}', fmt="json")
    both = config.with_kube_flags(context="b", namespace="y")
    assert (both.kube_context, both.namespace) == ("b", "y")
    neither = config.with_kube_flags(context=None, namespace=None)
    assert (neither.kube_context, neither.namespace) == ("a", "x")


def test_ttl_flag_wins_over_the_file() -> None:
    config = parse_config('{"agent": {"ttl": 60}}', fmt="json")
    assert config.with_agent_ttl(None).agent.ttl == 60
    assert config.with_agent_ttl(7.6).agent.ttl == 8
    assert config.with_agent_ttl(0.2).agent.ttl == 1  # never 0: the agent would not wait


def test_local_response_timeout_defaults_to_a_minute_and_is_read() -> None:
    """``agent.local_response_timeout``: 60 s unless the file says otherwise."""
    assert parse_config("{}", fmt="json").agent.local_response_timeout == 60
    config = parse_config('{"agent": {"local_response_timeout": 5}}', fmt="json")
    assert config.agent.local_response_timeout == 5
    toml = parse_config("[agent]\nlocal_response_timeout = 300\n", fmt="toml")
    assert toml.agent.local_response_timeout == 300


def test_body_buffer_bounds_default_to_mirrords() -> None:
    """Without the keys, the body buffer is mirrord's 65535 bytes and 1000 ms."""
    agent = parse_config("{}", fmt="json").agent
    assert (agent.max_body_buffer_size, agent.max_body_buffer_timeout) == (65535, 1000)


def test_body_buffer_bounds_load_in_mirrords_form() -> None:
    """agent.max_body_buffer_size (bytes) and max_body_buffer_timeout (ms) load as written."""
    text = '{"agent": {"max_body_buffer_size": 1024, "max_body_buffer_timeout": 250,},}'
    agent = parse_config(text, fmt="json", source="m.json").agent
    assert (agent.max_body_buffer_size, agent.max_body_buffer_timeout) == (1024, 250)


@pytest.mark.parametrize(("text", "message"), [
    ('{"agent": {"max_body_buffer_size": 0}}',
     "agent.max_body_buffer_size: expected whole bytes 1..16777216, got 0"),
    ('{"agent": {"max_body_buffer_size": 99999999}}',
     "agent.max_body_buffer_size: expected whole bytes 1..16777216, got 99999999"),
    ('{"agent": {"max_body_buffer_timeout": 1.5}}',
     "agent.max_body_buffer_timeout: expected whole milliseconds 1..60000, got 1.5"),
    ('{"agent": {"max_body_buffer_timeout": "1s"}}',
     "agent.max_body_buffer_timeout: expected whole milliseconds 1..60000, got a string"),
])
def test_bad_body_buffer_bounds_name_the_key(text: str, message: str) -> None:
    """A body buffer bound out of range is an error naming its key."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, fmt="json", source="m.json")
    assert message in str(info.value)
