"""Settings: defaults, precedence (explicit > environment > default), checks, CLI flags, socket path."""

from __future__ import annotations

import argparse
import os

import pytest

from taskpool.config import BY_NAME, SETTINGS, SOCKET_NAME, Config, add_arguments, load_config, resolve_socket
from taskpool.errors import ConfigError


def test_defaults_load_with_no_sources():
    config = load_config({}, environ={})
    assert isinstance(config, Config)
    for setting in SETTINGS:
        assert getattr(config, setting.name) == setting.default, setting.name
    assert config.workers == (os.cpu_count() or 2)
    assert config.spool == "spool"
    assert config.socket is None
    assert config.import_ == ()
    assert config.socket_mode == 0o600
    assert config.log_level == "INFO"
    assert config.sources == {}
    assert config.socket_path == os.path.abspath(os.path.join("spool", SOCKET_NAME))


def test_load_config_with_no_arguments_gives_defaults():
    assert load_config(None, environ={}) == load_config({}, environ={})


def test_environment_beats_defaults():
    environ = {"TASKPOOL_WORKERS": "3", "TASKPOOL_SPOOL": "/srv/spool", "TASKPOOL_SOCKET": "/run/tp.sock"}
    config = load_config({}, environ=environ)
    assert config.workers == 3
    assert config.spool == "/srv/spool"
    assert config.socket == "/run/tp.sock"
    assert config.socket_path == "/run/tp.sock"


def test_explicit_values_beat_environment():
    environ = {"TASKPOOL_WORKERS": "3", "TASKPOOL_SPOOL": "/srv/env-spool"}
    config = load_config({"workers": 5, "spool": "/srv/arg-spool"}, environ=environ)
    assert config.workers == 5
    assert config.spool == "/srv/arg-spool"
    assert config.sources == {"workers": 5, "spool": "/srv/arg-spool"}


def test_explicit_none_falls_back_to_environment_then_default():
    config = load_config({"workers": None, "spool": None}, environ={"TASKPOOL_WORKERS": "7"})
    assert config.workers == 7
    assert config.spool == BY_NAME["spool"].default
    assert config.sources == {}


def test_empty_environment_variable_is_ignored():
    config = load_config({}, environ={"TASKPOOL_WORKERS": "", "TASKPOOL_SPOOL": ""})
    assert config.workers == BY_NAME["workers"].default
    assert config.spool == "spool"


def test_environment_is_read_only_for_settings_that_declare_a_variable():
    config = load_config({}, environ={"TASKPOOL_MAX_READY": "5", "TASKPOOL_LOG_LEVEL": "DEBUG"})
    assert config.max_ready == BY_NAME["max_ready"].default
    assert config.log_level == "INFO"


def test_string_values_are_parsed():
    config = load_config(
        {"workers": "4", "graceful_timeout": "2.5", "socket_mode": "660", "log_level": "debug",
         "socket": "none", "allow_uid": ["1000", 1001], "import_": "app.tasks"},
        environ={},
    )
    assert config.workers == 4
    assert config.graceful_timeout == 2.5
    assert config.socket_mode == 0o660
    assert config.log_level == "DEBUG"
    assert config.socket is None
    assert config.allow_uid == (1000, 1001)
    assert config.import_ == ("app.tasks",)


@pytest.mark.parametrize("mode", ["600", "660", "640", "0o600", 0o600, 0o660])
def test_private_socket_modes_are_accepted(mode):
    config = load_config({"socket_mode": mode}, environ={})
    assert config.socket_mode == (int(mode, 8) if isinstance(mode, str) else mode)


BAD = [
    ({"workers": 0}, {}, "workers"),
    ({"workers": "0"}, {}, "workers"),
    ({"workers": -2}, {}, "workers"),
    ({}, {"TASKPOOL_WORKERS": "0"}, "workers"),
    ({"workers": "two"}, {}, "workers"),
    ({}, {"TASKPOOL_WORKERS": "many"}, "workers"),
    ({"workers": "2.5"}, {}, "workers"),
    ({"workers": 2.5}, {}, "workers"),
    ({"graceful_timeout": -1}, {}, "graceful_timeout"),
    ({"graceful_timeout": "-0.5"}, {}, "graceful_timeout"),
    ({"graceful_timeout": "soon"}, {}, "graceful_timeout"),
    ({"socket_mode": "666"}, {}, "socket_mode"),
    ({"socket_mode": 0o666}, {}, "socket_mode"),
    ({"socket_mode": 700}, {}, "socket_mode"),  # decimal 700 is 0o1274
    ({"socket_mode": 0o1777}, {}, "socket_mode"),
    ({"socket_mode": "1777"}, {}, "socket_mode"),
    ({"socket_mode": "400"}, {}, "socket_mode"),
    ({"socket_mode": "604"}, {}, "socket_mode"),
    ({"socket_mode": "8"}, {}, "socket_mode"),
    ({"log_level": "verbose"}, {}, "log_level"),
    ({"log_level": "CRITICAL"}, {}, "log_level"),
    ({"max_ready": 0}, {}, "max_ready"),
    ({"max_frame": "0"}, {}, "max_frame"),
    ({"max_tasks_per_worker": -1}, {}, "max_tasks_per_worker"),
    ({"max_memory_per_worker": "-5"}, {}, "max_memory_per_worker"),
    ({"allow_uid": ["root"]}, {}, "allow_uid"),
    ({"bogus_setting": 1}, {}, "bogus_setting"),
    ({"worker": 2}, {}, "worker"),
]


@pytest.mark.parametrize(("explicit", "environ", "name"), BAD, ids=[f"{n}={e or v}" for e, v, n in BAD])
def test_bad_values_raise_config_error_naming_the_setting(explicit, environ, name):
    with pytest.raises(ConfigError) as info:
        load_config(explicit, environ=environ)
    assert name in str(info.value)


def test_error_from_the_environment_names_the_variable():
    with pytest.raises(ConfigError, match=r"\$TASKPOOL_WORKERS"):
        load_config({}, environ={"TASKPOOL_WORKERS": "0"})


def test_bad_environment_value_is_ignored_when_an_explicit_value_wins():
    assert load_config({"workers": 2}, environ={"TASKPOOL_WORKERS": "nonsense"}).workers == 2


# -- CLI flags -------------------------------------------------------------------

# One flag (and value) per setting; the test below fails when a setting is added without one here.
SAMPLE_FLAGS = {
    "workers": ["--workers", "3"],
    "spool": ["--spool", "/srv/spool"],
    "socket": ["--socket", "/run/tp.sock"],
    "import_": ["--import", "app.tasks", "--import", "other.tasks"],
    "socket_mode": ["--socket-mode", "660"],
    "socket_group": ["--socket-group", "www-data"],
    "allow_uid": ["--allow-uid", "1000", "--allow-uid", "1001"],
    "max_tasks_per_worker": ["--max-tasks-per-worker", "50"],
    "max_memory_per_worker": ["--max-memory-per-worker", "512"],
    "graceful_timeout": ["--graceful-timeout", "12.5"],
    "max_ready": ["--max-ready", "10"],
    "result_cache": ["--result-cache", "20"],
    "max_frame": ["--max-frame", "65536"],
    "client_buffer": ["--client-buffer", "131072"],
    "pidfile": ["--pidfile", "/run/tp.pid"],
    "log_file": ["--log-file", "/var/log/tp.log"],
    "log_level": ["--log-level", "warning"],
    "store": ["--store", "memory"],
    "retention_days": ["--retention-days", "0.5"],
    "post_fork": ["--post-fork", "pkg.hooks:setup"],
    "prefetch": ["--prefetch", "3"],
    "prefetch_below": ["--prefetch-below", "0.02"],
    "spin": ["--spin", "0.0005"],
}
EXPECTED = {
    "workers": 3, "spool": "/srv/spool", "socket": "/run/tp.sock", "import_": ("app.tasks", "other.tasks"),
    "socket_mode": 0o660, "socket_group": "www-data", "allow_uid": (1000, 1001), "max_tasks_per_worker": 50,
    "max_memory_per_worker": 512, "graceful_timeout": 12.5, "max_ready": 10, "result_cache": 20,
    "max_frame": 65536, "client_buffer": 131072, "pidfile": "/run/tp.pid", "log_file": "/var/log/tp.log",
    "log_level": "WARNING", "store": "memory", "retention_days": 0.5, "post_fork": "pkg.hooks:setup",
    "prefetch": 3, "prefetch_below": 0.02, "spin": 0.0005,
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test")
    add_arguments(parser)
    return parser


def test_sample_flags_cover_every_setting():
    assert set(SAMPLE_FLAGS) == {s.name for s in SETTINGS} == set(EXPECTED)


def test_add_arguments_creates_a_flag_for_every_setting():
    argv = [arg for name in SAMPLE_FLAGS for arg in SAMPLE_FLAGS[name]]
    args = make_parser().parse_args(argv)
    config = load_config(vars(args), environ={"TASKPOOL_WORKERS": "9"})
    for name, value in EXPECTED.items():
        assert getattr(config, name) == value, name


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_each_flag_sets_only_its_own_setting(setting):
    args = vars(make_parser().parse_args(SAMPLE_FLAGS[setting.name]))
    assert {k for k, v in args.items() if v is not None} == {setting.name}


def test_flags_default_to_none_so_environment_and_defaults_apply():
    args = make_parser().parse_args([])
    assert set(vars(args)) == {s.name for s in SETTINGS}
    assert all(value is None for value in vars(args).values())
    config = load_config(vars(args), environ={"TASKPOOL_WORKERS": "6"})
    assert config.workers == 6
    assert config.sources == {}


def test_bad_flag_value_is_reported_by_load_config():
    args = make_parser().parse_args(["--socket-mode", "666"])
    with pytest.raises(ConfigError, match="socket_mode"):
        load_config(vars(args), environ={})


# -- socket path -------------------------------------------------------------------


def test_resolve_socket_defaults_to_spool_directory(tmp_path):
    assert resolve_socket(str(tmp_path), None) == str(tmp_path / SOCKET_NAME)


def test_resolve_socket_prefers_an_explicit_socket(tmp_path):
    assert resolve_socket(str(tmp_path / "spool"), str(tmp_path / "other.sock")) == str(tmp_path / "other.sock")


def test_resolve_socket_treats_empty_socket_as_unset(tmp_path):
    assert resolve_socket(str(tmp_path), "") == str(tmp_path / SOCKET_NAME)


def test_resolve_socket_makes_relative_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_socket("rel-spool", None) == str(tmp_path / "rel-spool" / SOCKET_NAME)
    assert resolve_socket("ignored", "rel.sock") == str(tmp_path / "rel.sock")
    assert resolve_socket(None, None) == str(tmp_path / "spool" / SOCKET_NAME)
    assert resolve_socket("", None) == str(tmp_path / "spool" / SOCKET_NAME)


def test_config_socket_path_follows_resolve_socket(tmp_path):
    spool = str(tmp_path / "s")
    assert load_config({"spool": spool}, environ={}).socket_path == os.path.join(spool, SOCKET_NAME)
    sock = str(tmp_path / "x.sock")
    assert load_config({"spool": spool, "socket": sock}, environ={}).socket_path == sock


def test_configs_compare_and_hash_by_their_values_not_their_sources():
    given, defaulted = load_config({"workers": 4}, environ={}), load_config({}, environ={"TASKPOOL_WORKERS": "4"})
    assert given.sources != defaulted.sources
    assert given == defaulted and hash(given) == hash(defaulted)
    assert "sources" not in repr(given)
