"""Typed configuration: every default lives here.

Sources, highest priority first: explicit keyword arguments, environment
variables ``QPE_*`` (EUMETSAT keys also as ``EUMETSAT_CONSUMER_KEY`` /
``EUMETSAT_CONSUMER_SECRET``), an optional YAML file (``QPE_CONFIG`` or
``Settings.load(path)``), then the defaults below.  Unknown keys are errors.

Secrets (the EUMETSAT consumer key and secret) come from the environment or from
Prefect Secret blocks named by ``eumetsat_key_block`` / ``eumetsat_secret_block``
(read by the Data Store source when it is built); they are ``SecretStr`` here and
never printed.  S3 credentials are not settings: s3fs / botocore take them from the
standard AWS chain (environment, profiles, instance or pod roles).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict,
                               YamlConfigSettingsSource)
from pydantic_settings.exceptions import SettingsError

from qpe_core.errors import ConfigError
from qpe_core.grids import DEFAULT_AREA, GRIDS

#: SEVIRI IR channels used by default (IR_039 is optional: solar contamination by day).
DEFAULT_CHANNELS = ["WV_062", "WV_073", "IR_087", "IR_097", "IR_108", "IR_120", "IR_134"]
#: Every SEVIRI channel name the readers know.
SEVIRI_IR_CHANNELS = ["IR_039", "WV_062", "WV_073", "IR_087", "IR_097", "IR_108", "IR_120", "IR_134"]
#: Temporal lags of the input stack, minutes relative to the valid time: the newest slot and the one
#: 15 minutes before. Two slots beat one beyond seed noise in placement and CRPS for the U-Net and the
#: default model; four did not in placement (README "Several slots against one", ``cpu-temporal``).
DEFAULT_LAGS = [0, -15]
#: Names of the secret settings (refused in config files: environment or Prefect Secret blocks only).
SECRET_NAMES = ("eumetsat_consumer_key", "eumetsat_consumer_secret", "qpe_eumetsat_consumer_key",
                "qpe_eumetsat_consumer_secret")


class Settings(BaseSettings):
    """All run-time settings of the product (see README for the YAML form)."""

    model_config = SettingsConfigDict(env_prefix="QPE_", extra="forbid", validate_default=True,
                                      populate_by_name=True)

    area: str = Field(DEFAULT_AREA, description="name of the target grid (qpe areas)")
    channels: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_CHANNELS),
                                description="SEVIRI channels of the archive, in order")
    lags: Annotated[list[int], NoDecode] = Field(default_factory=lambda: list(DEFAULT_LAGS),
                            description="temporal lags of the input stack, minutes (<= 0)")
    slot_minutes: int = Field(15, description="slot length, minutes (15 for the 0-degree service)")
    stack_gaps: Literal["error", "mask"] = Field(
        "error", description="missing lag slot: 'error' names it, 'mask' fills NaN and adds a mask")
    archive_url: str = Field("data/archive/{area}.zarr", description="archive cube (path or s3://)")
    products_url: str = Field("data/products", description="where products are written (path or s3://)")
    cache_dir: str = Field("data/cache", description="granule cache and resampling look-up tables")
    min_radar_coverage: float = Field(0.5, ge=0.0, le=1.0, description="fraction of grid covered by radar")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="where ensembles run: auto (GPU when visible), cpu, cuda, cuda:N")
    eumetsat_consumer_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("QPE_EUMETSAT_CONSUMER_KEY", "EUMETSAT_CONSUMER_KEY",
                                            "eumetsat_consumer_key"))
    eumetsat_consumer_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("QPE_EUMETSAT_CONSUMER_SECRET", "EUMETSAT_CONSUMER_SECRET",
                                            "eumetsat_consumer_secret"))
    eumetsat_key_block: str | None = Field(
        None, description="Prefect Secret block holding the EUMETSAT consumer key (read when the key "
                          "is not in the environment)")
    eumetsat_secret_block: str | None = Field(
        None, description="Prefect Secret block holding the EUMETSAT consumer secret (read when the "
                          "secret is not in the environment)")
    eumetsat_api_url: str | None = Field(
        None, description="EUMETSAT Data Store API root (default eumdac's https://api.eumetsat.int)")
    alert_block: str = Field(
        "qpe-alerts", min_length=1,
        description="Prefect notification block of the alert automations (deployments/automations.yaml): a "
                    "Custom Webhook block's name, or '<block-type-slug>/<name>' for another notification block")
    alert_min_csi: float = Field(
        0.2, ge=0.0, le=1.0, description="live verification emits qpe.verification.degraded when the 24 h "
                                         "CSI at 1 mm/h is below this")
    alert_max_crps: float | None = Field(
        None, gt=0.0, description="... or when the 24 h CRPS (mm/h) is above this (None: CRPS not checked)")
    alert_min_slots: int = Field(
        8, ge=1, description="skill is judged only with at least this many scored slots in the last 24 h")

    @field_validator("area")
    @classmethod
    def _known_area(cls, v: str) -> str:
        if v not in GRIDS:
            raise ValueError(f"unknown area {v!r}; known: {', '.join(GRIDS)}")
        return v

    @field_validator("channels", mode="before")
    @classmethod
    def _split_channels(cls, v):
        return [c.strip(" '\"") for c in v.strip("[] ").split(",") if c.strip()] if isinstance(v, str) else v

    @field_validator("channels")
    @classmethod
    def _known_channels(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in SEVIRI_IR_CHANNELS]
        if bad:
            raise ValueError(f"unknown channel(s) {bad}; known: {', '.join(SEVIRI_IR_CHANNELS)}")
        if not v or len(set(v)) != len(v):
            raise ValueError("channels must be a non-empty list without duplicates")
        return v

    @field_validator("lags", mode="before")
    @classmethod
    def _split_lags(cls, v):
        if isinstance(v, str):
            try:
                return [int(s) for s in v.strip("[] ").split(",") if s.strip()]
            except ValueError:
                raise ValueError(f"lags must be integers in minutes, got {v!r}") from None
        return v

    @field_validator("lags")
    @classmethod
    def _check_lags(cls, v: list[int]) -> list[int]:
        if not v or any(lag > 0 for lag in v) or len(set(v)) != len(v):
            raise ValueError("lags must be distinct minutes <= 0, e.g. 0,-15 or 0,-15,-30,-45")
        return sorted(v, reverse=True)

    @field_validator("slot_minutes")
    @classmethod
    def _check_slot(cls, v: int) -> int:
        if v <= 0 or 60 % v:
            raise ValueError("slot_minutes must divide 60 (5 or 15)")
        return v

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_path = os.environ.get("QPE_CONFIG")
        sources = [init_settings, env_settings]
        if yaml_path:
            source = YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path)
            secrets = sorted(k for k in source.yaml_data or {} if str(k).lower() in SECRET_NAMES)
            if secrets:  # a config file is copied, committed and shared: secrets stay out of it
                raise SettingsError(f"{yaml_path}: {', '.join(secrets)} must not be in a config file; set "
                                    "EUMETSAT_CONSUMER_KEY / EUMETSAT_CONSUMER_SECRET in the environment or "
                                    "name Prefect Secret blocks (eumetsat_key_block / eumetsat_secret_block)")
            sources.append(source)
        return tuple(sources)

    def resolved_archive_url(self) -> str:
        return self.archive_url.format(area=self.area)


def load_settings(config_file: str | Path | None = None, **overrides) -> Settings:
    """Build :class:`Settings`, turning validation errors into one-line :class:`ConfigError`."""
    if config_file is not None and not Path(config_file).is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    old = os.environ.get("QPE_CONFIG")
    try:
        if config_file is not None:
            os.environ["QPE_CONFIG"] = str(config_file)
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        where = f" (from {config_file or os.environ.get('QPE_CONFIG') or 'environment'})"
        raise ConfigError(f"invalid configuration{where}: {problems}") from None
    finally:
        if config_file is not None:
            if old is None:
                os.environ.pop("QPE_CONFIG", None)
            else:
                os.environ["QPE_CONFIG"] = old
