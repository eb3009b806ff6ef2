"""Products from an ensemble ``rain(member, y, x)`` (mm/h): statistics, the product cube,
Cloud-Optimized GeoTIFFs and PNG quick-looks.

* :mod:`~qpe_core.products.ensemble_stats` — mean, p50, p90, P(R > 0.1/1/5/10 mm/h)
* :mod:`~qpe_core.products.cube` — Zarr v3 product cube, atomic idempotent slot writes
* :mod:`~qpe_core.products.cog` — COGs under ``<root>/<area>/<YYYY>/<MM>/<DD>/``
* :mod:`~qpe_core.products.quicklook` — PNG of the mean and P(R > 1 mm/h) with coastlines

Submodules are imported on use (rasterio and matplotlib are only loaded by cog/quicklook).
"""

from qpe_core.products.ensemble_stats import PROB_VARS, STAT_VARS, THRESHOLDS, ensemble_stats, prob_name

__all__ = ["PROB_VARS", "STAT_VARS", "THRESHOLDS", "ensemble_stats", "prob_name"]
