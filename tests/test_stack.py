"""Temporal stack assembly and its missing-slot policy."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_bt
from qpe_core.archive import Archive
from qpe_core.errors import MissingSlotError, QpeError
from qpe_core.slots import seviri_slot
from qpe_core.stack import lag_times, missing_lags, temporal_stack

LAGS_4 = [0, -15, -30, -45]  # the product's lags until 2026-12-05: a gap at -30 min shows in them

CH = ["IR_108", "IR_120", "WV_062"]


@pytest.fixture
def archive(tmp_path):
    arc = Archive.create(str(tmp_path / "a.zarr"), "france-3km", CH)
    for k, t in enumerate(["2024-06-01T11:15", "2024-06-01T11:45", "2024-06-01T12:00"]):
        arc.write_seviri(seviri_slot(random_bt(k, 3), CH, t, "france-3km"))
    return arc


def test_full_stack_order_and_values(archive):
    st = temporal_stack(archive, "2024-06-01T12:00Z", lags=[0, -15, -45])
    assert st["bt"].dims == ("lag", "channel", "y", "x") and st["bt"].shape == (3, 3, 384, 384)
    assert list(st["lag"].values) == [0, -15, -45]
    np.testing.assert_array_equal(st["bt"].values[0], random_bt(2, 3))
    np.testing.assert_array_equal(st["bt"].values[1], random_bt(1, 3))
    np.testing.assert_array_equal(st["bt"].values[2], random_bt(0, 3))
    assert st["available"].values.tolist() == [1, 1, 1] and st["valid"].values.all()
    assert st.attrs["area"] == "france-3km" and "spatial_ref" in st.coords


def test_channel_subset(archive):
    st = temporal_stack(archive, "2024-06-01T12:00", lags=[0], channels=["WV_062", "IR_108"])
    np.testing.assert_array_equal(st["bt"].values[0, 0], random_bt(2, 3)[2])
    with pytest.raises(QpeError, match=r"channels \['IR_134'\] are not in archive"):
        temporal_stack(archive, "2024-06-01T12:00", lags=[0], channels=["IR_134"])


def test_gap_error_names_every_missing_slot(archive):
    with pytest.raises(MissingSlotError) as exc:
        temporal_stack(archive, "2024-06-01T12:00", lags=[0, -15, -30, -45])
    msg = str(exc.value)
    assert "2024-06-01T11:30Z (lag -30 min)" in msg and "2024-06-01T11:15Z" not in msg
    assert [str(t) for t in missing_lags(archive, "2024-06-01T12:00", LAGS_4)] == ["2024-06-01 11:30:00"]
    assert missing_lags(archive, "2024-06-01T12:00") == []  # the default lags 0, -15 need no 11:30


def test_gap_mask_policy(archive):
    st = temporal_stack(archive, "2024-06-01T12:00", LAGS_4, gaps="mask")
    assert st["available"].values.tolist() == [1, 1, 0, 1]
    assert np.isnan(st["bt"].values[2]).all() and not st["valid"].values[2].any()
    assert st["valid"].values[[0, 1, 3]].all()
    assert st.attrs["missing_slots"] == ["2024-06-01T11:30Z"]


def test_current_slot_always_required(archive):
    with pytest.raises(MissingSlotError, match=r"2024-06-01T12:15Z \(lag 0 min\)"):
        temporal_stack(archive, "2024-06-01T12:15", gaps="mask")


def test_lag_validation():
    with pytest.raises(QpeError, match="not on the 15-minute slot grid"):
        lag_times("2024-06-01T12:07")
    with pytest.raises(QpeError, match=r"lags \[-10\]"):
        lag_times("2024-06-01T12:00", [0, -10])
