"""Readers: real files -> calibrated slots on the grid (see :mod:`qpe_core.slots`).

* :mod:`qpe_core.readers.seviri` - SEVIRI native / HRIT / netCDF (plain or zipped) through satpy
* :mod:`qpe_core.readers.satip` - Satip zipped-Zarr SEVIRI sequences (0-1023 scaled)
* :mod:`qpe_core.readers.odim` - OPERA ODIM HDF5 composites (RATE or DBZH)
* :mod:`qpe_core.readers.meteonet` - Meteo-France MeteoNet radar npz samples
"""
