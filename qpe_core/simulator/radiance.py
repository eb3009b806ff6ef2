"""SEVIRI IR channel synthesis from the simulator's cloud layers.

Units: brightness temperatures in K, radiances in mW m-2 sr-1 (cm-1)-1, heights in km,
wavenumbers in cm-1, water vapour in cm (precipitable), times UTC.

Each pixel is a clear-sky scene under up to two cloud layers: a liquid/mixed "main"
layer (low cloud, nimbostratus deck or convective tower) and an ice layer (anvil and
cirrus).  Per channel ``c`` the radiance is

    L = (1 - e_hi) * [(1 - e_m) * B(T_clear) + e_m * B(T_main)] + e_hi * B(T_high)

with emissivities ``e = 1 - exp(-k_c * tau / 2)`` (``k_c`` the absorption of ice or
water relative to 10.8 um: stronger at 12.0 um, weaker at 8.7 and 3.9 um, which makes
IR_108 - IR_120 large for thin cirrus) and the cloud temperatures as seen through the
air above the top: window channels lose the water vapour above the top; water vapour
and CO2 channels see a cloud only above their emission level and, for tops above the
tropopause, the warmer stratospheric air (WV_062 - IR_108 > 0 over overshooting tops);
IR_097 adds stratospheric ozone emission.  The ice and main layers are seen displaced
by the parallax of a geostationary satellite at 0 deg E (mainly northward over Europe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special

from qpe_core.simulator.fields import FieldParams, FieldState
from qpe_core.simulator.spectral import Advector, fast_normal

PLANCK_C1 = 1.191042e-5        # mW m-2 sr-1 cm4
PLANCK_C2 = 1.4387752          # cm K
R_EARTH_KM = 6371.0
R_GEO_KM = 42164.0
LAPSE_K_PER_KM = 6.5
OVERSHOOT_K_PER_KM = 7.0
OZONE_T_K = 235.0
SOLAR_039 = 14.6               # TOA solar irradiance at 3.9 um, mW m-2 cm
Z_CLOUD_BASE_KM = 1.5          # convective cloud base
Z_GLACIATED_KM = 6.0           # towers above this carry ice and join the ice layer
MAX_LEVEL_KM = 15.0            # highest parallax level of the main layer, km
MAX_LEVELS = 48                # at most this many parallax levels (coarser near the limb)
LEVEL_CACHE_ELEMENTS = 4_000_000   # cache the level index arrays up to this many elements


@dataclass(frozen=True)
class ChannelSpec:
    """Radiative constants of one channel.  Clear-sky BT (K) is
    ``base + skin*(Ts-288) + air*(Ta-288) - wv*W - uth*UTH - rh*RH``."""

    nu: float                  # central wavenumber, cm-1
    k_ice: float               # ice absorption relative to 10.8 um
    k_water: float             # liquid water absorption relative to 10.8 um
    nedt: float                # noise, K
    kind: str                  # "window", "vapour" or "ozone"
    base: float = 288.0
    skin: float = 1.0
    air: float = 0.0
    wv: float = 0.0
    uth: float = 0.0
    rh: float = 0.0
    t_max: float = 1.0         # vapour: transmittance above a tropopause-high top; ozone: of the ozone layer
    soft: float = 3.0          # vapour: K width of the emission-level transition
    delta: float = 0.0         # vapour: K colder air just above a tropospheric top
    overshoot: float = 0.0     # vapour: K warming per K of top below the tropopause


CHANNELS: dict[str, ChannelSpec] = {
    "IR_039": ChannelSpec(2568.832, 0.55, 0.6, 0.25, "window", base=287.5, wv=0.3),
    "WV_062": ChannelSpec(1600.548, 1.0, 1.0, 0.20, "vapour", base=244.0, skin=0.0, air=0.25, uth=17.0,
                          t_max=0.85, soft=3.0, delta=6.0, overshoot=1.5),
    "WV_073": ChannelSpec(1360.330, 0.9, 1.0, 0.20, "vapour", base=259.0, skin=0.0, air=0.35, rh=14.0,
                          t_max=0.92, soft=3.0, delta=4.0, overshoot=1.0),
    "IR_087": ChannelSpec(1148.620, 0.75, 0.8, 0.15, "window", base=287.0, wv=1.4),
    "IR_097": ChannelSpec(1035.289, 0.8, 0.9, 0.20, "ozone", wv=0.7, t_max=0.75),
    "IR_108": ChannelSpec(931.700, 1.0, 1.0, 0.12, "window", wv=0.5),
    "IR_120": ChannelSpec(836.445, 1.15, 1.1, 0.15, "window", base=287.7, wv=1.2),
    "IR_134": ChannelSpec(751.792, 1.1, 1.0, 0.20, "vapour", base=265.6, skin=0.2, air=0.8, wv=1.0,
                          t_max=0.95, soft=4.0, delta=3.0, overshoot=0.8),
}


def planck(nu: float, t: np.ndarray) -> np.ndarray:
    """Radiance (mW m-2 sr-1 (cm-1)-1) at wavenumber ``nu`` (cm-1) for temperature ``t`` (K)."""
    return (PLANCK_C1 * nu ** 3) / np.expm1((PLANCK_C2 * nu) / t)


def brightness_temperature(nu: float, rad: np.ndarray) -> np.ndarray:
    """Inverse of :func:`planck`: brightness temperature (K)."""
    return (PLANCK_C2 * nu) / np.log1p((PLANCK_C1 * nu ** 3) / rad)


# ----------------------------------------------------------------------------- geometry and time

def parallax_pixels_per_km(lon: np.ndarray, lat: np.ndarray, sat_lon: float = 0.0):
    """Apparent displacement (rows, cols) per km of cloud height as seen from a
    geostationary satellite at ``sat_lon`` (deg E): away from the sub-satellite point
    (``tan(viewing zenith)`` capped at 6, i.e. 80 deg, near and beyond the limb)."""
    lam, phi = np.radians(lon - sat_lon), np.radians(lat)
    up = np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])
    view = R_EARTH_KM * up - np.array([R_GEO_KM, 0.0, 0.0])[:, None, None]
    east = np.stack([-np.sin(lam), np.cos(lam), np.zeros_like(lam)])
    north = np.stack([-np.sin(phi) * np.cos(lam), -np.sin(phi) * np.sin(lam), np.cos(phi)])
    horiz_e, horiz_n = np.sum(view * east, axis=0), np.sum(view * north, axis=0)
    down = np.maximum(-np.sum(view * up, axis=0), np.hypot(horiz_e, horiz_n) / 6.0)
    d_e, d_n = horiz_e / down, horiz_n / down
    lat_r, lat_c = np.gradient(phi)
    lon_r, lon_c = np.gradient(np.radians(lon))
    e_c, e_r = R_EARTH_KM * np.cos(phi) * lon_c, R_EARTH_KM * np.cos(phi) * lon_r
    n_c, n_r = R_EARTH_KM * lat_c, R_EARTH_KM * lat_r
    det = e_c * n_r - e_r * n_c
    rows, cols = (e_c * d_n - n_c * d_e) / det, (d_e * n_r - e_r * d_n) / det
    return rows.astype(np.float32), cols.astype(np.float32)


class Geometry:
    """Static per-pixel geography: lon/lat (deg), local solar time phase, parallax (px/km)."""

    def __init__(self, lon: np.ndarray, lat: np.ndarray):
        self.lon = np.asarray(lon, dtype=np.float64)
        self.lat = np.asarray(lat, dtype=np.float64)
        omega = 2 * math.pi / 24.0 * self.lon / 15.0
        self.cos_off, self.sin_off = np.cos(omega).astype(np.float32), np.sin(omega).astype(np.float32)
        self.lat32 = self.lat.astype(np.float32)
        self.sin_lat = np.sin(np.radians(self.lat)).astype(np.float32)
        self.cos_lat = np.cos(np.radians(self.lat)).astype(np.float32)
        self.parallax_row, self.parallax_col = parallax_pixels_per_km(self.lon, self.lat)

    def daily_cosine(self, time: pd.Timestamp, peak_h: float) -> np.ndarray:
        """``cos(2 pi (LST - peak_h) / 24)`` per pixel (LST local mean solar time, h)."""
        utc = time.hour + time.minute / 60.0 + time.second / 3600.0
        a = 2 * math.pi / 24.0 * (utc - peak_h)
        return math.cos(a) * self.cos_off - math.sin(a) * self.sin_off

    def cos_solar_zenith(self, time: pd.Timestamp) -> np.ndarray:
        """Cosine of the solar zenith angle (no equation of time; <0 at night)."""
        decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + time.day_of_year) / 365.0)
        return self.sin_lat * math.sin(decl) + self.cos_lat * math.cos(decl) * self.daily_cosine(time, 12.0)


@dataclass
class Thermal:
    """Thermal state: skin and 2 m air temperature, tropopause temperature (K) and height (km)."""

    t_skin: np.ndarray
    t_air: np.ndarray
    t_trop: np.ndarray
    z_trop: np.ndarray


def season(time: pd.Timestamp) -> float:
    """+1 in late July, -1 in mid January."""
    return math.cos(2 * math.pi * (time.day_of_year - 200) / 365.25)


def thermal_state(geo: Geometry, time: pd.Timestamp, surface: np.ndarray) -> Thermal:
    """Clear-sky surface temperatures with latitude, season and a diurnal cycle from local
    solar time (skin max ~13:30, amplitude 2-8 K), ``surface`` a static heterogeneity (std units)."""
    s = season(time)
    t_mean = 284.0 + 8.0 * s - 0.7 * (geo.lat32 - 45.0) + 1.5 * surface
    amp = (5.0 + 2.5 * s) * np.clip(0.75 + 0.3 * surface, 0.3, 1.3)
    t_skin = t_mean + amp * geo.daily_cosine(time, 13.5)
    t_air = t_mean + 0.4 * amp * geo.daily_cosine(time, 15.0)
    t_trop = 216.0 + 0.25 * (geo.lat32 - 45.0) - 2.0 * s + np.zeros_like(t_air)
    z_trop = (t_air - t_trop) / LAPSE_K_PER_KM
    return Thermal(t_skin.astype(np.float32), t_air.astype(np.float32), t_trop.astype(np.float32),
                   z_trop.astype(np.float32))


def convective_forcing(geo: Geometry, time: pd.Timestamp) -> np.ndarray:
    """Convective forcing (dimensionless, -1.7 to 1.7): diurnal cycle peaking at 16 local
    solar time plus a seasonal term (summer +0.7, winter -0.7)."""
    diurnal = geo.daily_cosine(time, 16.0)
    return (diurnal + 0.7 * season(time)).astype(np.float32)


def temperature_at(z: np.ndarray, th: Thermal) -> np.ndarray:
    """Air temperature (K) at height ``z`` (km): 6.5 K/km to the tropopause, then
    7 K/km colder for overshooting tops (adiabatic cooling above the tropopause)."""
    above = np.maximum(z - th.z_trop, 0.0)
    return np.where(above > 0, th.t_trop - OVERSHOOT_K_PER_KM * above, th.t_air - LAPSE_K_PER_KM * z)


# ----------------------------------------------------------------------------- cloud layers

@dataclass(frozen=True)
class CloudParams:
    """Cloud-layer constants (latent thresholds in standard deviations)."""

    tower_thr: float = 1.6             # updraft above this: convective tower (cumulus congestus ...)
    mature: float = 2.4                # ... reaching the tropopause above this
    core_thr: float = 2.3              # cloud_type 2 (convective core) above this
    overshoot_thr: float = 2.8         # overshooting tops (up to 2 km) above this
    cirrus_thr: float = 1.0
    cirrus_tau_max: float = 4.5
    low_thr: float = 0.9


@dataclass
class CloudLayers:
    """Two cloud layers per pixel, (H, W): a liquid/mixed main layer (low cloud, nimbostratus
    deck, convective towers) and an ice layer (anvils, cirrus, glaciated towers).  Heights
    in km (0 where none), visible optical depths."""

    z_main: np.ndarray
    tau_main: np.ndarray
    z_high: np.ndarray
    tau_high: np.ndarray
    tau_anvil: np.ndarray       # part of tau_high of convective origin
    core: np.ndarray            # bool: glaciated tower top above the ice layer
    cloud_type: np.ndarray      # int8, see :func:`classify`


def cloud_layers(st: FieldState, z_trop: np.ndarray, fp: FieldParams,
                 p: CloudParams = CloudParams()) -> CloudLayers:
    """Ground-frame cloud layers from the latent fields of ``st``; ``z_trop`` in km."""
    grow = np.clip((st.updraft - p.tower_thr) / (p.mature - p.tower_thr), 0.0, 1.0)
    tower = st.updraft > p.tower_thr
    overshoot = 2.0 * np.clip(st.updraft - p.overshoot_thr, 0.0, 1.0)
    z_tow = np.where(tower, Z_CLOUD_BASE_KM + (z_trop - Z_CLOUD_BASE_KM) * (0.3 + 0.7 * grow) + overshoot, 0.0)
    deck = st.strat - st.deck_thr
    z_ns = np.where(deck > 0, 2.5 + 5.0 * np.clip(deck / 1.6, 0.0, 1.0), 0.0)
    tau_ns = 30.0 * np.clip(deck / fp.strat_cloud_margin, 0.0, 1.0)
    low = st.low - p.low_thr
    z_lo = np.where(low > 0, 0.6 + 1.6 * np.clip(low / 1.5, 0.0, 1.0), 0.0)
    tau_lo = np.where(low > 0, 2.0 + 14.0 * np.clip(low, 0.0, 1.0), 0.0)
    z_main = np.maximum(np.maximum(z_tow, z_ns), z_lo).astype(np.float32)
    tau_main = (np.where(tower, 50.0, 0.0) + tau_ns + tau_lo).astype(np.float32)
    z_high, tau_high, tau_anvil, core = _ice_layer(st, tower, z_tow, z_trop, p)
    return CloudLayers(z_main, tau_main, z_high, tau_high, tau_anvil, core,
                       classify(tau_main, core, tau_high, tau_anvil))


def _ice_layer(st: FieldState, tower, z_tow, z_trop, p: CloudParams):
    """``(z_high, tau_high, tau_anvil, core)``: anvils near the tropopause, thinner and lower
    cirrus (shields partly tied to the stratiform field: fronts), glaciated towers on top."""
    ci = 0.917 * st.cirrus + 0.4 * st.strat - p.cirrus_thr
    tau_ci = np.where(ci > 0, p.cirrus_tau_max * np.tanh(np.maximum(ci, 0.0) / 1.2), 0.0)
    z_ci = z_trop - 1.0 - 2.5 * np.exp(-2.0 * np.maximum(ci, 0.0))
    tau_hi = st.anvil + tau_ci
    z_hi = (st.anvil * (z_trop - 0.7) + tau_ci * z_ci) / np.maximum(tau_hi, 1e-6)
    # glaciated towers reaching the ice layer become its (opaque) top; lower ones hide below
    pierce = tower & (z_tow > np.maximum(np.where(tau_hi > 0, z_hi, 0.0) - 0.5, Z_GLACIATED_KM))
    z_hi = np.where(pierce, np.maximum(z_hi, z_tow), z_hi)
    tau_hi = np.where(pierce, np.maximum(tau_hi, 40.0), tau_hi)
    return (np.where(tau_hi > 0, z_hi, 0.0).astype(np.float32), tau_hi.astype(np.float32),
            np.where(pierce, tau_hi, st.anvil).astype(np.float32), pierce & (st.updraft > p.core_thr))


def classify(tau_main, core, tau_high, tau_anvil) -> np.ndarray:
    """Cloud type codes (int8): 0 clear, 1 low/stratiform (liquid or mixed layer on top),
    2 convective core (glaciated tower top above the ice layer), 3 anvil (ice with 10.8 um
    emissivity >= 0.85, mostly of convective origin), 4 thin cirrus (other ice, emissivity > 0.2)."""
    eps_hi = 1.0 - np.exp(-0.5 * tau_high)
    ctype = np.zeros(np.shape(tau_main), np.int8)
    ctype[tau_main > 0.45] = 1
    ctype[eps_hi > 0.2] = 4
    ctype[(eps_hi >= 0.85) & (tau_anvil >= 0.5 * tau_high)] = 3
    ctype[core] = 2
    return ctype


# ----------------------------------------------------------------------------- synthesis

class RadianceModel:
    """Parallax-shifted multi-channel brightness temperatures from a :class:`FieldState`."""

    def __init__(self, geo: Geometry, channels, rng: np.random.Generator):
        unknown = [c for c in channels if c not in CHANNELS]
        if unknown:
            raise ValueError(f"simulator has no model for channel(s) {unknown}; known: {', '.join(CHANNELS)}")
        self.geo, self.channels, self.rng = geo, list(channels), rng
        self.shape = geo.lat.shape
        self.adv = Advector(self.shape)
        h, w = self.shape
        self.rows = np.arange(h, dtype=np.float32)[:, None]
        self.cols = np.arange(w, dtype=np.float32)[None, :]
        p_max = float(np.max(np.hypot(geo.parallax_row, geo.parallax_col)))
        self.level_km = max(min(1.0, 0.9 / max(p_max, 1e-6)), MAX_LEVEL_KM / MAX_LEVELS)  # < 1 px apart
        self.n_levels = int(math.ceil(MAX_LEVEL_KM / self.level_km))
        self.level_idx: list[np.ndarray] | None = None          # cached when small enough
        if (self.n_levels + 2) * h * w <= LEVEL_CACHE_ELEMENTS:
            self.level_idx = [self._level_index(j) for j in range(self.n_levels + 2)]

    def _nearest_index(self, z) -> np.ndarray:
        """Flat index of the true position of a top of height ``z`` (km) seen at each pixel."""
        h, w = self.shape
        r = np.rint(self.rows - z * self.geo.parallax_row).astype(np.intp) % h
        c = np.rint(self.cols - z * self.geo.parallax_col).astype(np.intp) % w
        return (r * w + c).ravel()

    def _level_index(self, j: int) -> np.ndarray:
        return self._nearest_index(np.float32(j * self.level_km))

    def parallax(self, cl: CloudLayers, th: Thermal) -> tuple[CloudLayers, np.ndarray]:
        """Satellite-frame cloud layers and visible top height (km).

        The ice layer (smooth heights) is moved by backward bilinear interpolation; the
        main layer, whose tops jump from 1 to 13 km, by matching height levels (< 1 px apart): a
        pixel shows the highest top whose displaced position lands on it (occlusion);
        where nothing lands (behind a displaced tower) the main layer is clear."""
        n = self.n_levels
        level = np.clip(np.rint(cl.z_main / self.level_km), 0, n).astype(np.int16).ravel()
        src = np.full(level.size, -1, np.intp)
        present = np.bincount(level, minlength=n + 2) > 0
        for j in np.flatnonzero(present | np.roll(present, 1)):
            idx = self.level_idx[j] if self.level_idx else self._level_index(j)
            lev = level[idx]
            hit = (lev <= j) & (lev >= j - 1)          # tolerance of one level: no gaps
            src[hit] = idx[hit]
        seen = src >= 0
        src = np.where(seen, src, 0)
        tau_m, z_m, core = (np.where(seen, f.ravel()[src], 0).reshape(self.shape)
                            for f in (cl.tau_main, cl.z_main, cl.core))
        z_ice = np.where(cl.tau_high > 0, cl.z_high, th.z_trop - 1.5)
        z_ice = z_ice.ravel()[self._nearest_index(z_ice)].reshape(self.shape)
        self.adv.prepare(z_ice * self.geo.parallax_row, z_ice * self.geo.parallax_col)
        tau_h, tz_h, tau_an = self.adv(np.stack([cl.tau_high, cl.tau_high * cl.z_high, cl.tau_anvil]))
        z_h = tz_h / np.maximum(tau_h, 1e-6)        # optical-depth weighted: no dilution at edges
        core = core.astype(bool)
        z_top = np.where(1.0 - np.exp(-0.5 * tau_h) > 0.5, z_h, z_m)
        return CloudLayers(z_m, tau_m, z_h, tau_h, tau_an, core, classify(tau_m, core, tau_h, tau_an)), z_top

    def __call__(self, st: FieldState, cl: CloudLayers, th: Thermal, time: pd.Timestamp):
        """Brightness temperatures (C, H, W) float32 in K and satellite-frame diagnostics,
        from the ground-frame humidity of ``st`` and cloud layers ``cl``."""
        sat, z_top = self.parallax(cl, th)
        t_main, t_high = temperature_at(sat.z_main, th), temperature_at(sat.z_high, th)
        wv = (2.2 * np.exp(0.065 * (th.t_air - 288.0)) * (0.6 + 0.8 * st.rh_mid)).astype(np.float32)
        mu0 = np.maximum(self.geo.cos_solar_zenith(time), 0.0) if "IR_039" in self.channels else None
        bt = np.empty((len(self.channels),) + self.shape, np.float32)
        for i, name in enumerate(self.channels):
            bt[i] = self._channel(CHANNELS[name], th, wv, st, sat, t_main, t_high, mu0)
        bt += fast_normal(self.rng, bt.shape) * np.array(
            [CHANNELS[c].nedt for c in self.channels], np.float32)[:, None, None]
        e_hi, e_m = 1.0 - np.exp(-0.5 * sat.tau_high), 1.0 - np.exp(-0.5 * sat.tau_main)
        top = np.where(e_hi >= 0.5, t_high, np.where(e_m >= 0.5, t_main, th.t_skin)).astype(np.float32)
        diag = {"cloud_type": sat.cloud_type, "cloud_top_k": top, "cloud_top_height_km": z_top.astype(np.float32),
                "high_emissivity_108": e_hi.astype(np.float32)}
        return bt, diag

    @staticmethod
    def _seen(ch: ChannelSpec, t_top, z_top, t_clear, wv, th: Thermal):
        """Temperature (K) of an opaque top at ``t_top``/``z_top`` as seen in the channel."""
        if ch.kind != "vapour":
            return t_top - ch.wv * wv * np.exp(-0.5 * z_top)
        trans = ch.t_max * special.expit((t_clear - t_top) / ch.soft)
        above = np.minimum(t_clear, np.maximum(t_top - ch.delta, th.t_trop))
        above = above + ch.overshoot * np.maximum(th.t_trop - t_top, 0.0)
        return trans * t_top + (1.0 - trans) * above

    def _channel(self, ch: ChannelSpec, th: Thermal, wv, st: FieldState, sat: CloudLayers, t_main, t_high, mu0):
        """Brightness temperature (K) of one channel (see the module docstring)."""
        t_clear = (ch.base + ch.skin * (th.t_skin - 288.0) + ch.air * (th.t_air - 288.0)
                   - ch.wv * wv - ch.uth * st.uth - ch.rh * st.rh_mid)
        e_m = 1.0 - np.exp((-0.5 * ch.k_water) * sat.tau_main)
        e_h = 1.0 - np.exp((-0.5 * ch.k_ice) * sat.tau_high)
        b_clear = planck(ch.nu, t_clear)
        low = b_clear + e_m * (planck(ch.nu, self._seen(ch, t_main, sat.z_main, t_clear, wv, th)) - b_clear)
        rad = low + e_h * (planck(ch.nu, self._seen(ch, t_high, sat.z_high, t_clear, wv, th)) - low)
        if ch.kind == "ozone":
            rad = ch.t_max * rad + (1.0 - ch.t_max) * planck(ch.nu, OZONE_T_K)
        if mu0 is not None and ch.nu > 2000.0:
            albedo = (1.0 - e_h) * (0.04 + 0.11 * e_m) + 0.05 * e_h
            rad = rad + (SOLAR_039 / math.pi) * mu0 * albedo
        return brightness_temperature(ch.nu, rad)
