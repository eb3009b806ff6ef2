"""Embedded SEVIRI + radar simulator: co-located IR brightness temperatures (K) and
surface rain rate (mm/h), deterministic for a seed.

* :class:`Simulator` works on any ``(H, W)`` grid of ``pixel_km`` km pixels (rows north
  to south), with optional per-pixel lon/lat (deg; default a box centred on France);
  ``step(time)`` advances one slot and returns ``(bt (C,H,W) K, rain (H,W) mm/h, diag)``.
* :func:`simulate` yields ``(seviri_slot, radar_slot)`` Datasets on a named grid.

Physics in short (see :mod:`.fields` and :mod:`.radiance`): rain and cloud fields are
transforms of latent Gaussian fields with power-law spectra evolving as scale-dependent
AR(1) processes (STEPS-like) and advected semi-Lagrangian by a smooth two-level wind;
convective towers lead their rain by ~20 min and feed anvils much wider than the rain
cores; synoptic thin cirrus and non-raining low cloud add the usual IR ambiguities; the
IR channels come from a two-layer radiative model with channel-dependent emissivities,
water vapour / CO2 / ozone absorption above the tops, a diurnal and latitudinal surface
temperature, geostationary parallax from 0 deg E and sensor noise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from qpe_core.config import DEFAULT_CHANNELS
from qpe_core.grids import get_spec, lonlats
from qpe_core.simulator.fields import Dynamics, FieldParams
from qpe_core.simulator.spectral import power_law_amplitude, wavenumbers
from qpe_core.simulator.radiance import (CHANNELS, CloudParams, Geometry, RadianceModel, cloud_layers,
                                         convective_forcing, thermal_state)
from qpe_core.slots import radar_slot, seviri_slot
from qpe_core.timeutil import slot_range, to_utc

__all__ = ["Simulator", "simulate", "FieldParams", "CloudParams", "CHANNELS", "CLOUD_TYPES", "SOURCE",
           "default_lonlat"]

SOURCE = "qpe simulator"
#: Codes of the ``cloud_type`` diagnostic.
CLOUD_TYPES = {0: "clear", 1: "low/stratiform", 2: "convective core", 3: "anvil", 4: "thin cirrus"}
DEFAULT_CENTRE = (2.5, 46.5)        # lon, lat (deg) of the default box over France


def default_lonlat(shape: tuple[int, int], pixel_km: float, centre=DEFAULT_CENTRE):
    """Lon/lat (deg) of a north-up box of ``shape`` pixels of ``pixel_km`` km around ``centre``."""
    h, w = shape
    lat = np.clip(centre[1] + (h / 2.0 - 0.5 - np.arange(h)) * pixel_km / 111.2, -85.0, 85.0)
    lat2 = np.repeat(lat[:, None], w, axis=1)
    cols = np.arange(w) - w / 2.0 + 0.5
    lon2 = centre[0] + cols[None, :] * pixel_km / (111.2 * np.cos(np.radians(lat2)))
    return lon2, lat2


class Simulator:
    """Co-located SEVIRI IR brightness temperatures and radar rain on a pixel grid.

    ``shape`` (H, W); ``pixel_km`` pixel size (km); ``seed`` fixes everything; ``lon``/``lat``
    (deg, (H, W)) default to a box over France; ``channels`` SEVIRI IR names (IR_039 allowed);
    ``slot_minutes`` the time step (min); ``spinup_slots`` slots run before the first
    ``step`` so that anvils and histories are developed; ``params``/``cloud_params`` tuning
    constants; ``workers`` FFT threads (results do not depend on it)."""

    dynamics_class = Dynamics       # the radar-driven simulator (:mod:`.rain_driven`) swaps in its own

    def __init__(self, shape: tuple[int, int], pixel_km: float, seed: int, lon=None, lat=None,
                 channels: Sequence[str] = DEFAULT_CHANNELS, slot_minutes: int = 15,
                 spinup_slots: int = 16, params: FieldParams | None = None,
                 cloud_params: CloudParams | None = None, workers: int | None = None):
        shape = (int(shape[0]), int(shape[1]))
        if min(shape) < 8 or pixel_km <= 0 or slot_minutes <= 0:
            raise ValueError(f"need shape >= 8x8, pixel_km > 0 and slot_minutes > 0; got {shape}, {pixel_km}, "
                             f"{slot_minutes}")
        if (lon is None) != (lat is None):
            raise ValueError("give both lon and lat, or neither")
        if lon is None:
            lon, lat = default_lonlat(shape, pixel_km)
        if np.shape(lon) != shape or np.shape(lat) != shape:
            raise ValueError(f"lon/lat must have shape {shape}")
        if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
            raise ValueError("lon/lat must be finite (a grid on the Earth, no space pixels)")
        self.shape, self.pixel_km, self.seed = shape, float(pixel_km), int(seed)
        self.channels, self.slot_minutes = list(channels), int(slot_minutes)
        self.spinup_slots = int(spinup_slots)
        seeds = np.random.SeedSequence(self.seed).spawn(3)
        workers = workers or min(4, os.cpu_count() or 1)
        self.geo = Geometry(lon, lat)
        rng = [np.random.default_rng(s) for s in seeds]
        self.dynamics = self.dynamics_class(shape, pixel_km, rng[0], slot_minutes, params, workers)
        self.radiance = RadianceModel(self.geo, self.channels, rng[1])
        self.surface = self._surface(rng[2])
        self.cloud_params = cloud_params or CloudParams()
        self.time: pd.Timestamp | None = None

    def _surface(self, rng: np.random.Generator) -> np.ndarray:
        """Static surface heterogeneity (std units, ~100 km scale): land/sea-like contrasts."""
        _, _, k, weight = wavenumbers(self.shape, self.pixel_km)
        amp = power_law_amplitude(k, weight, self.shape, 3.0, 100.0)
        white = rng.standard_normal(self.shape)
        return np.fft.irfft2(np.fft.rfft2(white) * amp, s=self.shape).astype(np.float32)

    def _advance(self, time: pd.Timestamp):
        th = thermal_state(self.geo, time, self.surface)
        state = self.dynamics.step(convective_forcing(self.geo, time))
        return th, state, cloud_layers(state, th.z_trop, self.dynamics.p, self.cloud_params)

    def step(self, time) -> tuple[np.ndarray, np.ndarray, dict]:
        """Advance one slot to ``time`` (UTC; sets the sun and diurnal cycle, the dynamics
        always move by ``slot_minutes``).  Returns new arrays: ``bt`` (C, H, W) K float32,
        ``rain`` (H, W) mm/h float32 (0 where dry) and diagnostics: ``cloud_type`` (int8,
        satellite frame, see :data:`CLOUD_TYPES`), ``cloud_type_ground`` (int8, radar frame),
        ``cloud_top_k`` (K, radiating top: cloud or, where clear, surface skin),
        ``cloud_top_height_km``, ``high_emissivity_108``, ``rain_convective``,
        ``rain_stratiform`` (mm/h), ``surface_k`` (skin temperature, K)."""
        time = to_utc(time)
        if self.time is None:
            step = pd.Timedelta(minutes=self.slot_minutes)
            for i in range(self.spinup_slots, 0, -1):
                self._advance(time - i * step)
        th, state, clouds = self._advance(time)
        bt, diag = self.radiance(state, clouds, th, time)
        diag.update(cloud_type_ground=clouds.cloud_type, rain_convective=state.rain_conv,
                    rain_stratiform=state.rain_strat, surface_k=th.t_skin)
        self.time = time
        return bt, state.rain, diag


def simulate(area: str, start, periods: int, seed: int, channels: Sequence[str] = DEFAULT_CHANNELS,
             slot_minutes: int = 15) -> Iterator[tuple[xr.Dataset, xr.Dataset]]:
    """Yield ``(seviri_slot, radar_slot)`` for ``periods`` slots from ``start`` (on the slot
    grid, UTC) on the named grid ``area``; deterministic for ``(seed, start)``.  A generator:
    one slot in memory at a time."""
    spec = get_spec(area)
    times = slot_range(start, periods, slot_minutes)
    lon, lat = lonlats(area)
    res_x, res_y = spec.resolution_m
    sim = Simulator((spec.height, spec.width), 0.5 * (res_x + res_y) / 1000.0, seed, lon=lon, lat=lat,
                    channels=channels, slot_minutes=slot_minutes)
    attrs = {"source": SOURCE, "seed": int(seed)}
    for t in times:
        bt, rain, _ = sim.step(t)
        yield seviri_slot(bt, sim.channels, t, area, **attrs), radar_slot(rain, t, area, **attrs)
