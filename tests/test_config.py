"""Typed configuration: sources, aliases, and one-line validation errors."""

from __future__ import annotations

import pytest

from qpe_core.config import DEFAULT_CHANNELS, load_settings
from qpe_core.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("QPE_") or k.startswith("EUMETSAT_"):
            monkeypatch.delenv(k)


def test_defaults_in_one_place():
    s = load_settings()
    assert s.area == "france-3km" and s.channels == DEFAULT_CHANNELS and s.lags == [0, -15]
    assert s.resolved_archive_url() == "data/archive/france-3km.zarr"


def test_env_prefix_and_list_parsing(monkeypatch):
    monkeypatch.setenv("QPE_LAGS", "-30,0,-15")
    monkeypatch.setenv("QPE_CHANNELS", "IR_108,IR_120")
    s = load_settings()
    assert s.lags == [0, -15, -30] and s.channels == ["IR_108", "IR_120"]


def test_eumetsat_secrets_from_either_name(monkeypatch):
    monkeypatch.setenv("EUMETSAT_CONSUMER_KEY", "key-123")
    monkeypatch.setenv("QPE_EUMETSAT_CONSUMER_SECRET", "secret-456")
    s = load_settings()
    assert s.eumetsat_consumer_key.get_secret_value() == "key-123"
    assert s.eumetsat_consumer_secret.get_secret_value() == "secret-456"
    assert "key-123" not in repr(s) and "secret-456" not in str(s.model_dump())


def test_yaml_file_and_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "qpe.yaml"
    cfg.write_text("area: europe-opera-4km\nlags: [0, -30]\nstack_gaps: mask\n")
    monkeypatch.setenv("QPE_LAGS", "0,-15")
    s = load_settings(cfg)
    assert s.area == "europe-opera-4km" and s.stack_gaps == "mask"
    assert s.lags == [0, -15]  # environment beats the file
    assert load_settings(cfg, area="france-3km").area == "france-3km"  # arguments beat both


@pytest.mark.parametrize("kwargs, message", [
    ({"area": "mars-1km"}, "area: Value error, unknown area 'mars-1km'"),
    ({"channels": "IR_108,VIS006"}, r"unknown channel\(s\) \['VIS006'\]"),
    ({"lags": "0,15"}, "lags must be distinct minutes <= 0"),
    ({"lags": "0,abc"}, "lags must be integers"),
    ({"slot_minutes": 7}, "slot_minutes must divide 60"),
    ({"min_radar_coverage": 1.5}, "min_radar_coverage"),
    ({"stack_gaps": "ignore"}, "stack_gaps"),
    ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
])
def test_validation_errors_are_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message) as exc:
        load_settings(**kwargs)
    assert "\n" not in str(exc.value)


def test_yaml_errors_name_the_file(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("arae: france-3km\n")
    with pytest.raises(ConfigError, match=r"bad.yaml\): arae: Extra inputs"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_device_setting(monkeypatch):
    from qpe_core.config import load_settings
    from qpe_core.nowcast import resolve_device

    assert load_settings().device == "auto" and resolve_device("auto") in ("cpu", "cuda")
    monkeypatch.setenv("QPE_DEVICE", "cuda:1")
    assert load_settings().device == "cuda:1"
    monkeypatch.setenv("QPE_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="device"):
        load_settings()


def test_to_utc_names_the_value_it_cannot_read():
    import pandas as pd

    from qpe_core.errors import QpeError
    from qpe_core.timeutil import to_utc

    assert to_utc("2024-06-01T12:00+02:00") == pd.Timestamp("2024-06-01T10:00")
    for bad in ("June", "tomorrow", "2024-13-01"):  # "June" parses as year 1, outside pandas' range
        with pytest.raises(QpeError, match=f"cannot parse time '{bad}'"):
            to_utc(bad)
