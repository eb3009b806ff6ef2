#!/usr/bin/env bash
# Fetch into .whl/ the wheels that scripts/gpu_study.sh installs on a GPU machine whose image has
# PyTorch, numpy, pandas, xarray, scipy, matplotlib, h5py, rich and typer but not the rest of what
# `qpe study` imports (no package index is reachable there). Run here, with network access to PyPI;
# pysteps and jsmin ship no binary wheel for CPython 3.12, so they are built with PY312 (default:
# python3.12 on the PATH). Versions are those of constraints.txt.
set -eu
cd "$(dirname "$0")/.."
PY312=${PY312:-python3.12}
pin() { grep -i "^${1//-/[-_]}==" constraints.txt | head -1; }
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
for p in annotated-types donfig google-crc32c importlib-metadata jsonpointer jsonschema jsonschema-specifications \
         lazy-importer numcodecs platformdirs pydantic pydantic-core pydantic-settings pykdtree pyproj pyresample \
         python-dotenv pytz referencing rfc3339-validator rpds-py typing-inspection zarr; do
  spec=$(pin "$p"); spec=${spec:-$p}
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT -d .whl "$spec"
done
"$PY312" -m pip wheel -q --no-deps -w .whl "$(pin jsmin || echo jsmin)" "$(pin pysteps || echo pysteps)"
du -sh .whl
