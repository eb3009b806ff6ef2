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

from qpe_core.simulator.fields import Advector, FieldState

PLANCK_C1 = 1.191042e-5        # mW m-2 sr-1 cm4
PLANCK_C2 = 1.4387752          # cm K
R_EARTH_KM = 6371.0
R_GEO_KM = 42164.0
LAPSE_K_PER_KM = 6.5
OVERSHOOT_K_PER_KM = 7.0
OZONE_T_K = 235.0
SOLAR_039 = 14.6               # TOA solar irradiance at 3.9 um, mW m-2 cm


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
    geostationary satellite at ``sat_lon`` (deg E): away from the sub-satellite point."""
    lam, phi = np.radians(lon - sat_lon), np.radians(lat)
    up = np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])
    view = R_EARTH_KM * up - np.array([R_GEO_KM, 0.0, 0.0])[:, None, None]
    east = np.stack([-np.sin(lam), np.cos(lam), np.zeros_like(lam)])
    north = np.stack([-np.sin(phi) * np.cos(lam), -np.sin(phi) * np.sin(lam), np.cos(phi)])
    down = -np.sum(view * up, axis=0)
    d_e, d_n = np.sum(view * east, axis=0) / down, np.sum(view * north, axis=0) / down
    lat_r, lat_c = np.gradient(phi)
    lon_r, lon_c = np.gradient(np.radians(lon))
    e_c, e_r = R_EARTH_KM * np.cos(phi) * lon_c, R_EARTH_KM * np.cos(phi) * lon_r
    n_c, n_r = R_EARTH_KM * lat_c, R_EARTH_KM * lat_r
    det = e_c * n_r - e_r * n_c
    return ((e_c * d_n - n_c * d_e) / det).astype(np.float32), ((d_e * n_r - e_r * d_n) / det).astype(np.float32)


class Geometry:
    """Static per-pixel geography: lon/lat (deg), local-time offset (h), parallax (px/km)."""

    def __init__(self, lon: np.ndarray, lat: np.ndarray):
        self.lon = np.asarray(lon, dtype=np.float64)
        self.lat = np.asarray(lat, dtype=np.float64)
        self.lst_offset_h = (self.lon / 15.0).astype(np.float32)
        self.lat32 = self.lat.astype(np.float32)
        self.sin_lat = np.sin(np.radians(self.lat)).astype(np.float32)
        self.cos_lat = np.cos(np.radians(self.lat)).astype(np.float32)
        self.parallax_row, self.parallax_col = parallax_pixels_per_km(self.lon, self.lat)

    def local_hours(self, time: pd.Timestamp) -> np.ndarray:
        """Local mean solar time (h) from UTC and longitude."""
        utc = time.hour + time.minute / 60.0 + time.second / 3600.0
        return (utc + self.lst_offset_h) % 24.0

    def cos_solar_zenith(self, time: pd.Timestamp) -> np.ndarray:
        """Cosine of the solar zenith angle (no equation of time; <0 at night)."""
        decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + time.dayofyear) / 365.0)
        hour_angle = np.radians(15.0 * (self.local_hours(time) - 12.0))
        return self.sin_lat * math.sin(decl) + self.cos_lat * math.cos(decl) * np.cos(hour_angle)


@dataclass
class Thermal:
    """Thermal state: skin and 2 m air temperature, tropopause temperature (K) and height (km)."""

    t_skin: np.ndarray
    t_air: np.ndarray
    t_trop: np.ndarray
    z_trop: np.ndarray


def season(time: pd.Timestamp) -> float:
    """+1 in late July, -1 in mid January."""
    return math.cos(2 * math.pi * (time.dayofyear - 200) / 365.25)


def thermal_state(geo: Geometry, time: pd.Timestamp, surface: np.ndarray) -> Thermal:
    """Clear-sky surface temperatures with latitude, season and a diurnal cycle from local
    solar time (skin max ~13:30, amplitude 2-8 K), ``surface`` a static heterogeneity (std units)."""
    s = season(time)
    lst = geo.local_hours(time)
    t_mean = 284.0 + 8.0 * s - 0.7 * (geo.lat32 - 45.0) + 1.5 * surface
    amp = (5.0 + 2.5 * s) * np.clip(0.75 + 0.3 * surface, 0.3, 1.3)
    t_skin = t_mean + amp * np.cos((2 * math.pi / 24.0) * (lst - 13.5))
    t_air = t_mean + 0.4 * amp * np.cos((2 * math.pi / 24.0) * (lst - 15.0))
    t_trop = 216.0 + 0.25 * (geo.lat32 - 45.0) - 2.0 * s + np.zeros_like(t_air)
    z_trop = (t_air - t_trop) / LAPSE_K_PER_KM
    return Thermal(t_skin.astype(np.float32), t_air.astype(np.float32), t_trop.astype(np.float32),
                   z_trop.astype(np.float32))


def diurnal_forcing(geo: Geometry, time: pd.Timestamp) -> np.ndarray:
    """Convective forcing in [-1, 1], peaking at 16 local solar time."""
    return np.cos((2 * math.pi / 24.0) * (geo.local_hours(time) - 16.0)).astype(np.float32)


def temperature_at(z: np.ndarray, th: Thermal) -> np.ndarray:
    """Air temperature (K) at height ``z`` (km): 6.5 K/km to the tropopause, then
    7 K/km colder for overshooting tops (adiabatic cooling above the tropopause)."""
    above = np.maximum(z - th.z_trop, 0.0)
    return np.where(above > 0, th.t_trop - OVERSHOOT_K_PER_KM * above, th.t_air - LAPSE_K_PER_KM * z)


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

    def _nearest(self, field: np.ndarray, z: np.ndarray) -> np.ndarray:
        """``field`` sampled at the true position of a top of height ``z`` seen at each pixel."""
        h, w = self.shape
        r = np.rint(self.rows - z * self.geo.parallax_row).astype(np.intp) % h
        c = np.rint(self.cols - z * self.geo.parallax_col).astype(np.intp) % w
        return field.ravel()[(r * w + c).ravel()].reshape(self.shape)

    def parallax(self, st: FieldState):
        """Satellite-frame ``(tau_main, z_main, tau_high, z_high, cloud_type, z_top)``."""
        eps_hi = 1.0 - np.exp(-0.5 * st.tau_high)
        z_vis = np.where(eps_hi > 0.5, st.z_high, st.z_main)
        z = self._nearest(z_vis, np.float32(10.0))
        for _ in range(2):
            z = self._nearest(z_vis, z)
        self.adv.prepare(z * self.geo.parallax_row, z * self.geo.parallax_col)
        tau_m, tz_m, tau_h, tz_h = self.adv(np.stack([st.tau_main, st.tau_main * st.z_main,
                                                      st.tau_high, st.tau_high * st.z_high]))
        z_m = tz_m / np.maximum(tau_m, 1e-6)      # optical-depth weighted: no dilution at edges
        z_h = tz_h / np.maximum(tau_h, 1e-6)
        return tau_m, z_m, tau_h, z_h, self._nearest(st.cloud_type, z), z

    def __call__(self, st: FieldState, th: Thermal, time: pd.Timestamp):
        """Brightness temperatures (C, H, W) float32 in K and satellite-frame diagnostics."""
        tau_m, z_m, tau_h, z_h, ctype, z_top = self.parallax(st)
        t_main, t_high = temperature_at(z_m, th), temperature_at(z_h, th)
        wv = (2.2 * np.exp(0.065 * (th.t_air - 288.0)) * (0.6 + 0.8 * st.rh_mid)).astype(np.float32)
        mu0 = np.maximum(self.geo.cos_solar_zenith(time), 0.0) if "IR_039" in self.channels else None
        bt = np.empty((len(self.channels),) + self.shape, np.float32)
        for i, name in enumerate(self.channels):
            bt[i] = self._channel(CHANNELS[name], th, wv, st, tau_m, z_m, t_main, tau_h, z_h, t_high, mu0)
        bt += self.rng.standard_normal(bt.shape, dtype=np.float32) * np.array(
            [CHANNELS[c].nedt for c in self.channels], np.float32)[:, None, None]
        e_hi, e_m = 1.0 - np.exp(-0.5 * tau_h), 1.0 - np.exp(-0.5 * tau_m)
        top = np.where(e_hi >= 0.5, t_high, np.where(e_m >= 0.5, t_main, th.t_skin)).astype(np.float32)
        return bt, {"cloud_type": ctype, "cloud_top_k": top, "cloud_top_height_km": z_top.astype(np.float32),
                    "high_emissivity_108": e_hi.astype(np.float32)}

    @staticmethod
    def _seen(ch: ChannelSpec, t_top, z_top, t_clear, wv, th: Thermal):
        """Temperature (K) of an opaque top at ``t_top``/``z_top`` as seen in the channel."""
        if ch.kind != "vapour":
            return t_top - ch.wv * wv * np.exp(-0.5 * z_top)
        trans = ch.t_max * special.expit((t_clear - t_top) / ch.soft)
        above = np.minimum(t_clear, np.maximum(t_top - ch.delta, th.t_trop))
        above = above + ch.overshoot * np.maximum(th.t_trop - t_top, 0.0)
        return trans * t_top + (1.0 - trans) * above

    def _channel(self, ch, th, wv, st, tau_m, z_m, t_main, tau_h, z_h, t_high, mu0):
        t_clear = (ch.base + ch.skin * (th.t_skin - 288.0) + ch.air * (th.t_air - 288.0)
                   - ch.wv * wv - ch.uth * st.uth - ch.rh * st.rh_mid)
        e_m = 1.0 - np.exp((-0.5 * ch.k_water) * tau_m)
        e_h = 1.0 - np.exp((-0.5 * ch.k_ice) * tau_h)
        b_clear = planck(ch.nu, t_clear)
        low = b_clear + e_m * (planck(ch.nu, self._seen(ch, t_main, z_m, t_clear, wv, th)) - b_clear)
        rad = low + e_h * (planck(ch.nu, self._seen(ch, t_high, z_h, t_clear, wv, th)) - low)
        if ch.kind == "ozone":
            rad = ch.t_max * rad + (1.0 - ch.t_max) * planck(ch.nu, OZONE_T_K)
        if mu0 is not None and ch.nu > 2000.0:
            albedo = (1.0 - e_h) * (0.04 + 0.11 * e_m) + 0.05 * e_h
            rad = rad + (SOLAR_039 / math.pi) * mu0 * albedo
        return brightness_temperature(ch.nu, rad)
