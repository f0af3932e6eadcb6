#!/usr/bin/env bash
# Fill .gpu/ (ignored by git) with what bench/gpu.py needs on a GPU machine with no network and no
# TensorFlow: Python 3.12 wheels of Keras, its two small dependencies that machine lacks (namex,
# optree), bcolz-zipline and this project, all installed there with --no-deps; and a few hundred
# JPEGs. Versions are those of the environment running this script (the tested ones).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${GPU_IMAGES_FROM:-../shared/data/catsdogs/train}
N=${GPU_IMAGES:-400}
test -d "$DATA" || { echo "no JPEG folder $DATA (set GPU_IMAGES_FROM)" >&2; exit 2; }
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .gpu && mkdir -p .gpu/whl .gpu/imgs
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl "keras==$(version keras)" "namex==$(version namex)" "optree==$(version optree)" \
    "bcolz-zipline==$(version bcolz-zipline)"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .gpu/whl .
# the first N/2 JPEGs of each class folder, flat
for d in "$DATA"/*/; do
    find "$d" -maxdepth 1 -iname '*.jpg' | sort | head -n $((N / 2)) | while read -r f; do
        cp "$f" ".gpu/imgs/$(basename "$d")-$(basename "$f")"
    done
done
echo "$(ls .gpu/imgs | wc -l) JPEGs, $(ls .gpu/whl | wc -l) wheels: $(du -sh .gpu | cut -f1) in .gpu/ (at most 64 MiB travel)"
