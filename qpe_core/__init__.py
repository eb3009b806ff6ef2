"""qpe_core: satellite quantitative precipitation estimation from MSG SEVIRI.

Data flows one way: granule -> calibrated slot on the grid -> archive cube ->
temporal stack -> ensemble -> products.  Every boundary is an xarray object with
CF attributes and a CRS; models see plain tensors.
"""

__version__ = "0.1.0"
