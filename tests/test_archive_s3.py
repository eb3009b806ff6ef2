"""The archive on a real S3-protocol server (moto_server on 127.0.0.1) through s3fs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from conftest import random_bt
from qpe_core.archive import Archive, summarize
from qpe_core.slots import radar_slot, seviri_slot
from qpe_core.stack import temporal_stack

CH = ["IR_108", "IR_120"]


def test_s3_round_trip_idempotent_and_stack(s3_bucket):
    import s3fs

    bucket, opts = s3_bucket
    url = f"s3://{bucket}/france.zarr"
    arc = Archive.create(url, "france-3km", CH, storage_options=opts)
    times = pd.date_range("2024-06-01T12:00", periods=3, freq="15min")
    arc.ensure_range(times[0], times[-1])
    for k, t in enumerate(times):
        arc.write_seviri(seviri_slot(random_bt(k, 2), CH, t, "france-3km"))
    arc.write_radar(radar_slot(np.full((384, 384), 1.5), times[-1], "france-3km"))

    fs = s3fs.S3FileSystem(**opts)
    before = {p: fs.info(p)["ETag"] for p in fs.find(f"{bucket}/france.zarr")}
    arc.write_seviri(seviri_slot(random_bt(1, 2), CH, times[1], "france-3km"))
    after = {p: fs.info(p)["ETag"] for p in fs.find(f"{bucket}/france.zarr")}
    assert after == before  # same slot, same bytes

    back = Archive.open(url, storage_options=opts)
    info = summarize(back)
    assert info["bt"]["slots"] == 3 and info["rain"]["slots"] == 1 and info["paired_slots"] == 1
    st = temporal_stack(back, times[-1], lags=[0, -15, -30])
    np.testing.assert_array_equal(st["bt"].values[2], random_bt(0, 2))
    ds = back.to_xarray()
    assert float(ds["rain"].sel(time=times[-1]).mean()) == 1.5
