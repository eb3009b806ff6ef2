"""Granule sources: where SEVIRI slots come from (EUMETSAT Data Store through
eumdac, a local directory, or the simulator) and the granule cache.

>>> from qpe_core.sources import make_source
>>> src = make_source("local", directory="../shared/data/seviri/hrit-20100119")
>>> src.fetch("2010-01-19T12:00Z")        # paths ready for qpe_core.ingest.ingest_seviri

The Data Store source (``make_source("eumdac", ...)``) is imported lazily: eumdac is
only loaded when it is used.
"""

from qpe_core.sources.base import (DOWNLOADS, SOURCE_KINDS, DownloadError, DownloadTimeout, GranuleRef,
                                   GranuleSource, SourceError, make_source, set_download_limit)
from qpe_core.sources.cache import GranuleCache, check_granule, sanitize_name

__all__ = ["DOWNLOADS", "SOURCE_KINDS", "DownloadError", "DownloadTimeout", "GranuleCache", "GranuleRef",
           "GranuleSource", "SourceError", "check_granule", "make_source", "sanitize_name", "set_download_limit"]
