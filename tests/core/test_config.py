"""The mirrord-compatible config file: guide examples, formats, semantics and mistakes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from waylay.core.engine.config import (
    Config,
    IncomingConfig,
    Mode,
    default_config,
    load_config,
    parse_config,
)
from waylay.core.engine.errors import EXIT_USAGE, ConfigError
from waylay.core.engine.filters import HttpFilter, RequestView

INCOMING = "feature.network.incoming"


def req(
    target: str = "/", *, headers: tuple[tuple[str, str], ...] = (), method: str = "GET"
) -> RequestView:
    return RequestView(method=method, target=target, headers=headers)


def json_config(text: str) -> Config:
    return parse_config(text, fmt="json", source="mirrord.json")


def json_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        json_config(text)
    return info.value


def the_filter(config: Config) -> HttpFilter:
    assert config.incoming.http_filter is not None
    return config.incoming.http_filter


# -- the six configs of mirrord's traffic-stealing guide, loaded as written ---------------

GUIDE_STEAL_ALL = '{"feature": {"network": {"incoming": "steal"}}}'
GUIDE_HEADER = (
    '{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
    '{"header_filter": "X-My-Header: my-header-value", "ports": [80, 8080]},}}}}'
)
GUIDE_PATH = (
    '{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
    '{"path_filter": "my/path", "ports": [80, 8080]},}}}}'
)
GUIDE_HEADER_REGEX = (
    '{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
    '{"header_filter": "X-Header-.+: header-value-.+", "ports": [80, 8080]},}}}}'
)
GUIDE_NOT_PROBES = (
    '{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
    '{"header_filter": "^User-Agent: (?!kube-probe)",}}}}}'
)
GUIDE_NOT_HEALTH = (
    '{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
    '{"path_filter": "^(?!/health/)",}}}}}'
)


def test_guide_steal_everything() -> None:
    """incoming "steal" takes every port whole, with no filter."""
    incoming = json_config(GUIDE_STEAL_ALL).incoming
    assert incoming.mode is Mode.STEAL
    assert incoming.http_filter is None
    assert incoming.intercepts(80) and incoming.intercepts(5432)
    assert incoming.filter_for(80) is None


def test_guide_header_filter_on_ports_80_and_8080() -> None:
    """The header filter applies on 80 and 8080 only; other ports are taken whole."""
    incoming = json_config(GUIDE_HEADER).incoming
    assert incoming.mode is Mode.STEAL and incoming.filter_ports == frozenset({80, 8080})
    f = incoming.filter_for(8080)
    assert f is not None and incoming.filter_for(9090) is None
    assert f.evaluate(req(headers=(("X-My-Header", "my-header-value"),))).matched
    assert f.evaluate(req(headers=(("x-my-header", "My-Header-Value; more"),))).matched
    assert not f.evaluate(req(headers=(("X-My-Header", "other"),))).matched


def test_guide_path_filter() -> None:
    """path_filter "my/path" is searched anywhere in the path."""
    f = the_filter(json_config(GUIDE_PATH))
    assert f.evaluate(req("/api/my/path?q=1")).matched
    assert f.evaluate(req("/My/Path")).matched
    assert not f.evaluate(req("/api/other?x=my")).matched


def test_guide_header_regex() -> None:
    """The guide's regex header filter matches any X-Header-* with a header-value-* value."""
    f = the_filter(json_config(GUIDE_HEADER_REGEX))
    assert f.evaluate(req(headers=(("X-Header-abc", "header-value-xyz"),))).matched
    assert not f.evaluate(req(headers=(("X-Header-abc", "value-xyz"),))).matched
    assert not f.evaluate(req(headers=(("X-Other", "header-value-xyz"),))).matched


def test_guide_filter_out_kube_probes() -> None:
    """The negative look-ahead leaves kube-probe requests alone and takes the rest."""
    f = the_filter(json_config(GUIDE_NOT_PROBES))
    assert json_config(GUIDE_NOT_PROBES).incoming.filter_ports is None
    assert not f.evaluate(req(headers=(("User-Agent", "kube-probe/1.30"),))).matched
    assert f.evaluate(req(headers=(("User-Agent", "curl/8"),))).matched
    assert not f.evaluate(req()).matched  # no user agent at all: not taken


def test_guide_filter_out_health_paths() -> None:
    """^(?!/health/) takes every path except those under /health/."""
    f = the_filter(json_config(GUIDE_NOT_HEALTH))
    assert not f.evaluate(req("/health/ready")).matched
    assert f.evaluate(req("/api/my/path?q=1")).matched
    assert f.evaluate(req("/healthz")).matched


# -- TOML and YAML equivalents ---------------------------------------------------------

TOML_HEADER = """
[feature.network.incoming]
mode = "steal"

[feature.network.incoming.http_filter]
header_filter = "X-My-Header: my-header-value"
ports = [80, 8080]
"""

YAML_NOT_PROBES = """
feature:
  network:
    incoming:
      mode: steal
      http_filter:
        header_filter: "^User-Agent: (?!kube-probe)"
"""


def test_toml_equivalent() -> None:
    """The guide's header filter written in TOML loads to the same config as the JSON."""
    toml = parse_config(TOML_HEADER, fmt="toml").incoming
    assert toml == json_config(GUIDE_HEADER).incoming
    assert toml.mode is Mode.STEAL and toml.filter_ports == frozenset({80, 8080})


def test_yaml_equivalent() -> None:
    """The guide's kube-probe filter written in YAML behaves like the JSON one."""
    f = the_filter(parse_config(YAML_NOT_PROBES, fmt="yaml"))
    assert f == the_filter(json_config(GUIDE_NOT_PROBES))
    assert not f.evaluate(req(headers=(("User-Agent", "kube-probe/1.30"),))).matched
    assert f.evaluate(req(headers=(("User-Agent", "curl/8"),))).matched


def test_yaml_off_is_a_string_as_in_yaml_1_2() -> None:
    """`mode: off` and `incoming: off` mean the mode "off", not YAML 1.1's boolean."""
    mode = parse_config("feature: {network: {incoming: {mode: off}}}", fmt="yaml").incoming.mode
    assert mode is Mode.OFF
    assert parse_config("feature: {network: {incoming: off}}", fmt="yaml").incoming.mode is Mode.OFF
    with pytest.raises(ConfigError, match="got 'yes'"):  # a string in YAML 1.2 too
        parse_config("feature: {network: {incoming: yes}}", fmt="yaml")


def test_load_config_picks_the_format_by_extension(tmp_path: Path) -> None:
    """load_config reads .json, .toml, .yaml and .yml files and records the source."""
    files = {
        "a.json": GUIDE_HEADER,
        "a.toml": TOML_HEADER,
        "a.yaml": YAML_NOT_PROBES,
        "a.yml": YAML_NOT_PROBES,
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        config = load_config(tmp_path / name)
        assert config.source == str(tmp_path / name)
        assert config.incoming.mode is Mode.STEAL


# -- semantics -------------------------------------------------------------------------


def test_default_config_mirrors_everything() -> None:
    """With no config file, every port is mirrored unfiltered."""
    config = default_config()
    assert config.incoming.mode is Mode.MIRROR
    assert config.incoming.intercepts(80) and config.incoming.filter_for(80) is None
    assert config.target is None and config.warnings == ()


@pytest.mark.parametrize(
    ("incoming", "mode"),
    [
        ('"steal"', Mode.STEAL),
        ('"mirror"', Mode.MIRROR),
        ('"off"', Mode.OFF),
        ("true", Mode.MIRROR),
        ("false", Mode.OFF),
        ("null", Mode.MIRROR),
        ("{}", Mode.MIRROR),
        ('{"mode": "off"}', Mode.OFF),
    ],
)
def test_incoming_forms(incoming: str, mode: Mode) -> None:
    """incoming may be a mode string, a boolean, null or an object."""
    config = json_config(f'{{"feature": {{"network": {{"incoming": {incoming}}}}}}}')
    assert config.incoming.mode is mode


def test_network_toggle() -> None:
    """feature.network: false turns incoming off; true keeps the default (mirror)."""
    assert json_config('{"feature": {"network": false}}').incoming.mode is Mode.OFF
    assert json_config('{"feature": {"network": true}}').incoming.mode is Mode.MIRROR
    assert not json_config('{"feature": {"network": false}}').incoming.intercepts(80)


def test_target_as_string_or_object() -> None:
    """target may be "pod/x" or {"path", "namespace"}, as in mirrord."""
    assert json_config('{"target": "pod/bear"}').target == "pod/bear"
    config = json_config('{"target": {"path": "deploy/api", "namespace": "shop"}}')
    assert (config.target, config.namespace) == ("deploy/api", "shop")
    assert json_config('{"target": {"namespace": "shop"}}').target is None


def test_ports_allow_list_and_ignore_list() -> None:
    """ports is an allow-list and ignore_ports a deny-list of remote ports."""
    allow = json_config('{"feature": {"network": {"incoming": {"ports": [80, 81]}}}}')
    assert allow.incoming.intercepts(80) and not allow.incoming.intercepts(82)
    deny = json_config('{"feature": {"network": {"incoming": {"ignore_ports": [9999]}}}}')
    assert deny.incoming.intercepts(80) and not deny.incoming.intercepts(9999)


def test_port_mapping_is_local_then_remote() -> None:
    """port_mapping [[local, remote]] delivers the remote port to the local one."""
    incoming = json_config(
        '{"feature": {"network": {"incoming": {"port_mapping": [[9333, 80], [7777, 8888]]}}}}'
    ).incoming
    assert incoming.local_port(80) == 9333 and incoming.local_port(8888) == 7777
    assert incoming.local_port(443) == 443
    assert dict(incoming.port_mapping) == {80: 9333, 8888: 7777}


def test_http_filter_ports_may_be_a_single_port() -> None:
    """http_filter.ports accepts one port as well as a list, like mirrord."""
    incoming = json_config(
        '{"feature": {"network": {"incoming": {"http_filter": {"path_filter": "x", "ports": 80}}}}}'
    ).incoming
    assert incoming.filter_ports == frozenset({80})
    assert incoming.mode is Mode.MIRROR  # mirror + filter: copies of matching requests


def test_any_of_and_method_filter_from_a_file() -> None:
    """Composite and method filters load from config like the simple ones."""
    f = the_filter(
        json_config(
            '{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
            '{"any_of": [{"method": "post"}, {"path": "^/api/"}]}}}}}'
        )
    )
    assert f.evaluate(req("/x", method="POST")).matched
    assert f.evaluate(req("/api/a")).matched
    assert not f.evaluate(req("/x")).matched


def test_other_mirrord_features_are_ignored_silently() -> None:
    """feature.fs, feature.env, agent, operator and the rest load without warnings."""
    config = json_config(
        """{
          "accept_invalid_certificates": false,
          "agent": {"log_level": "info", "ttl": 30},
          "operator": false,
          "feature": {
            "env": {"include": "A;B"}, "fs": "read",
            "network": {"outgoing": true, "dns": false, "incoming": "steal"}
          }
        }"""
    )
    assert config.incoming.mode is Mode.STEAL and config.warnings == ()


def test_mirrord_incoming_keys_waylay_ignores_are_warned_about() -> None:
    """listen_ports, ignore_localhost, ... load with a warning naming each key."""
    config = json_config(
        """{"feature": {"network": {"incoming": {
            "mode": "steal",
            "ignore_localhost": false,
            "listen_ports": [[80, 8111]],
            "https_delivery": {"protocol": "tls"}
        }}}}"""
    )
    assert len(config.warnings) == 3
    assert config.warnings[0] == (
        f"mirrord.json:3:13: {INCOMING}.ignore_localhost: accepted but ignored by waylay "
        "(waylay intercepts localhost traffic as any other)"
    )
    assert f"{INCOMING}.listen_ports" in config.warnings[1]


def test_warnings_for_filters_that_cannot_apply() -> None:
    """A filter with mode off, on unintercepted ports, or ports with no filter is warned."""
    off = json_config(
        '{"feature": {"network": {"incoming": {"mode": "off", '
        '"http_filter": {"path_filter": "a"}}}}}'
    )
    assert "has no effect while mode is off" in off.warnings[0]
    unreachable = json_config(
        '{"feature": {"network": {"incoming": {"ignore_ports": [8080], '
        '"http_filter": {"path_filter": "a", "ports": [80, 8080]}}}}}'
    )
    assert unreachable.warnings == (
        f"mirrord.json:1:99: {INCOMING}.http_filter.ports: port 8080 is not intercepted "
        "(see ports / ignore_ports), so the filter never applies there",
    )
    lonely = json_config('{"feature": {"network": {"incoming": {"http_filter": {"ports": [80]}}}}}')
    assert lonely.incoming.http_filter is None
    assert "has no effect without a filter" in lonely.warnings[0]


def test_incoming_config_is_immutable() -> None:
    """The loaded config cannot be changed in place, port_mapping included."""
    incoming = json_config(
        '{"feature": {"network": {"incoming": {"port_mapping": [[1, 2]]}}}}'
    ).incoming
    with pytest.raises(TypeError):
        incoming.port_mapping[3] = 4  # type: ignore[index]
    with pytest.raises(AttributeError):
        incoming.mode = Mode.OFF  # type: ignore[misc]
    assert IncomingConfig().port_mapping == {}


# -- mistakes, each with its message ----------------------------------------------------


def nested(incoming: str) -> str:
    """A file whose incoming object starts on line 3, column 17."""
    return '{"feature": {\n  "network": {\n    "incoming": ' + incoming + "\n  }\n}}"


@pytest.mark.parametrize(
    ("incoming", "key_path", "line", "column", "words"),
    [
        ('{"mode": "Steal"}', "mode", 3, 26, "expected steal, mirror or off, got 'Steal'"),
        ('"stael"', "", 3, 17, "expected steal, mirror or off, got 'stael'"),
        ("42", "", 3, 17, "expected steal, mirror, off, a boolean or an object"),
        ('{"mdoe": "steal"}', "mdoe", 3, 18, "unknown key 'mdoe'; did you mean 'mode'?"),
        ('{"bogus": 1}', "bogus", 3, 18, "unknown key 'bogus' (expected mode, http_filter"),
        ('{"http_header_filter": {"filter": "x"}}', "http_header_filter", 3, 18, "http_filter"),
        ('{"ports": [80], "ignore_ports": [81]}', "ignore_ports", 3, 33, "mutually exclusive"),
        ('{"ports": [80, 70000]}', "ports[1]", 3, 32, "port number 1..65535, got 70000"),
        ('{"ports": [0]}', "ports[0]", 3, 28, "got 0"),
        ('{"ports": [true]}', "ports[0]", 3, 28, "got a boolean"),
        ('{"ports": []}', "ports", 3, 27, "empty list"),
        ('{"ports": 80}', "ports", 3, 27, "expected a list of ports"),
        ('{"port_mapping": [[1]]}', "port_mapping[0]", 3, 35, "[local, remote] pair"),
        ('{"port_mapping": [[1, 80], [2, 80]]}', "port_mapping[1][1]", 3, 48, "mapped twice"),
        ('{"port_mapping": {"80": 1}}', "port_mapping", 3, 34, "expected a list"),
        ('{"http_filter": "x"}', "http_filter", 3, 33, "expected an object, got a string"),
        ('{"http_filter": {"ports": "80"}}', "http_filter.ports", 3, 43, "got a string"),
        (
            '{"http_filter": {"path_filter": "a", "header_filter": "b"}}',
            "http_filter.header_filter",
            3,
            54,
            "exactly one",
        ),
        ('{"http_filter": {"path_filter": ""}}', "http_filter.path_filter", 3, 49, "empty string"),
        ('{"http_filter": {"any_of": []}}', "http_filter.any_of", 3, 44, "empty list"),
        (
            '{"http_filter": {"any_of": [{"path": "a"}, {"header": "(x"}]}}',
            "http_filter.any_of[1].header",
            3,
            71,
            "invalid regex '(x' in header: missing )",
        ),
        (
            '{"http_filter": {"all_of": [{"path": "a"}, {"hedaer": "x"}]}}',
            "http_filter.all_of[1].hedaer",
            3,
            61,
            "did you mean 'header'?",
        ),
        ('{"http_filter": {"pathfilter": "a"}}', "http_filter.pathfilter", 3, 34, "path_filter"),
    ],
)
def test_mistakes_name_key_path_line_and_column(
    incoming: str, key_path: str, line: int, column: int, words: str
) -> None:
    """Each kind of mistake is a ConfigError with file, key path, line and column."""
    err = json_error(nested(incoming))
    full_path = f"{INCOMING}.{key_path}" if key_path else INCOMING
    assert (err.source, err.key_path, err.line, err.column) == (
        "mirrord.json",
        full_path,
        line,
        column,
    )
    assert words in err.message
    assert str(err).startswith(f"mirrord.json:{line}:{column}: {full_path}: ")
    assert err.exit_code == EXIT_USAGE


@pytest.mark.parametrize(
    ("text", "key_path", "words"),
    [
        ("[1, 2]", "", "expected an object at the top, got a list"),
        ('{"target": 3}', "target", "expected a string or an object"),
        ('{"target": ""}', "target", "empty string"),
        ('{"target": {"pth": "pod/x"}}', "target.pth", "did you mean 'path'?"),
        ('{"target": {"path": 1}}', "target.path", "expected a string"),
        ('{"feature": []}', "feature", "expected an object"),
        ('{"feature": {"network": "steal"}}', "feature.network", "a boolean or an object"),
    ],
)
def test_mistakes_outside_incoming(text: str, key_path: str, words: str) -> None:
    """The parts around incoming (top level, target, feature.network) are checked too."""
    err = json_error(text)
    assert err.key_path == key_path
    assert words in err.message
    assert err.line == 1


def test_json_syntax_error_names_file_line_and_column() -> None:
    """A JSON syntax error says where, in the compiler's file:line:col form."""
    err = json_error('{"feature": {\n  "network": {"incoming": "steal" "x"}}}')
    assert (err.line, err.column) == (2, 35)
    assert str(err).startswith("mirrord.json:2:35: feature.network.incoming: expected ','")


def test_json_duplicate_key() -> None:
    """A key given twice in JSON is an error naming the key."""
    err = json_error('{"feature": {"network": {"incoming": "steal", "incoming": "off"}}}')
    assert err.key_path == INCOMING and "duplicate key 'incoming'" in err.message
    assert (err.line, err.column) == (1, 47)


def test_toml_syntax_error_has_line_and_column() -> None:
    """TOML syntax errors carry tomllib's line and column."""
    with pytest.raises(ConfigError) as info:
        parse_config('[feature.network]\nincoming = "steal\n', fmt="toml", source="m.toml")
    assert (info.value.source, info.value.line) == ("m.toml", 2)
    assert info.value.column is not None
    assert "TOML syntax" in info.value.message and "(at line" not in info.value.message


def test_toml_semantic_error_names_the_key_path() -> None:
    """TOML has no positions, but mistakes still name the key path and file."""
    with pytest.raises(ConfigError) as info:
        parse_config('[feature.network.incoming]\nmode = "fast"\n', fmt="toml", source="m.toml")
    assert info.value.key_path == f"{INCOMING}.mode"
    assert str(info.value).startswith(f"m.toml: {INCOMING}.mode: expected steal")


def test_yaml_semantic_error_has_line_and_column() -> None:
    """YAML node marks give line and column for mistakes."""
    text = "feature:\n  network:\n    incoming:\n      mode: steal\n      ports: [80, 0]\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, fmt="yaml", source="m.yaml")
    err = info.value
    assert (err.key_path, err.line, err.column) == (f"{INCOMING}.ports[1]", 5, 19)


def test_yaml_syntax_error_has_line_and_column() -> None:
    """A YAML syntax error carries the problem's line and column."""
    with pytest.raises(ConfigError) as info:
        parse_config("feature:\n  network: [1, 2\n", fmt="yaml", source="m.yaml")
    assert info.value.source == "m.yaml" and info.value.line == 3
    assert "YAML syntax" in info.value.message


def test_yaml_duplicate_key() -> None:
    """A key given twice in YAML is an error, not silently the last one."""
    with pytest.raises(ConfigError) as info:
        parse_config("feature:\n  network: {}\n  network: {}\n", fmt="yaml", source="m.yaml")
    assert info.value.key_path == "feature.network"
    assert (info.value.line, info.value.column) == (3, 3)


def test_yaml_alias_bomb_is_not_exponential() -> None:
    """Chains of YAML aliases are walked once each, so a "billion laughs" file is cheap."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    config = parse_config("\n".join(lines) + "\nfeature: {network: {incoming: off}}\n", fmt="yaml")
    assert config.incoming.mode is Mode.OFF


def test_empty_yaml_and_toml_files_are_the_default() -> None:
    """An empty YAML or TOML file is the default config; an empty JSON file is an error."""
    assert parse_config("", fmt="yaml").incoming == IncomingConfig()
    assert parse_config("", fmt="toml").incoming == IncomingConfig()
    with pytest.raises(ConfigError):
        parse_config("", fmt="json")


def test_file_problems_name_the_file(tmp_path: Path) -> None:
    """Missing files, unknown extensions and non-UTF-8 files are ConfigErrors naming the file."""
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"nope\.json: cannot read the file"):
        load_config(missing)
    ini = tmp_path / "mirrord.ini"
    ini.write_text("x")
    with pytest.raises(ConfigError, match=r"mirrord\.ini: unknown config format"):
        load_config(ini)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"target": "caf\xe9"}')
    with pytest.raises(ConfigError, match=r"latin\.json: not UTF-8"):
        load_config(latin)
    with pytest.raises(ConfigError, match="unknown config format 'ini'"):
        parse_config("", fmt="ini")


_KEYS = st.sampled_from(
    [
        "mode",
        "http_filter",
        "ports",
        "ignore_ports",
        "port_mapping",
        "header_filter",
        "path_filter",
        "method_filter",
        "any_of",
        "all_of",
        "header",
        "path",
        "method",
        "listen_ports",
        "target",
        "x",
    ]
)
_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-5, 70000)
    | st.sampled_from(["steal", "mirror", "off", "", "^/a", "(", "GET"])
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_VALUES, st.dictionaries(st.integers(0, 3) | st.booleans(), _LEAVES, max_size=2))
def test_any_incoming_value_loads_or_raises_config_error(
    incoming: object, odd_keys: dict[object, object]
) -> None:
    """Whatever sits under incoming, JSON and YAML give a Config or a ConfigError."""
    doc = {"feature": {"network": {"incoming": incoming}}}
    for text, fmt in ((json.dumps(doc), "json"), (yaml.safe_dump(doc), "yaml")):
        with contextlib.suppress(ConfigError):
            parse_config(text, fmt=fmt)
    if isinstance(incoming, dict):  # YAML also allows non-string keys
        odd = {"feature": {"network": {"incoming": {**incoming, **odd_keys}}}}
        with contextlib.suppress(ConfigError):
            parse_config(yaml.safe_dump(odd), fmt="yaml")


def test_filter_ports_are_remote_ports_and_a_local_one_is_pointed_out() -> None:
    """With port_mapping, http_filter.ports name the target's ports (mirrord issue 2397)."""
    text = ('{"feature": {"network": {"incoming": {"mode": "steal", '
            '"port_mapping": [[9333, 80]], '
            '"http_filter": {"header_filter": "x", "ports": [%d]}}}}}')
    remote = json_config(text % 80)
    assert remote.warnings == ()
    assert remote.incoming.filter_for(80) is not None
    assert remote.incoming.local_port(80) == 9333
    local = json_config(text % 9333)
    assert local.incoming.filter_for(80) is None  # port 80 is taken whole, as in mirrord
    assert len(local.warnings) == 1
    assert "port 9333 is a local port of port_mapping" in local.warnings[0]
    assert "remote port 80 maps to 9333" in local.warnings[0]
    assert "http_filter.ports" in local.warnings[0]
