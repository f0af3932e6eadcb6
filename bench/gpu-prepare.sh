#!/usr/bin/env bash
# Fill .gpu/ (ignored by git) with what bench/gpu.py needs on a GPU machine with no network and no
# TensorFlow: Python 3.12 wheels of Keras, its two small dependencies that machine lacks (namex,
# optree), bcolz-zipline and this project, all installed there with --no-deps; nvImageCodec for CUDA 13
# and the nvJPEG it loads (about 29 MB; GPU_DECODER_WHEELS=0 leaves them out: torchvision is there
# already); and a few hundred real JPEGs (catsdogs, plus the cars and catbreeds JPEGs when ../shared has
# them). Versions are those of the environment running this script (the tested ones).
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
if [ "${GPU_DECODER_WHEELS:-1}" = 1 ]; then
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/whl "nvidia-nvimgcodec-cu13==${NVIMGCODEC_VERSION:-0.9.0.20}" "nvidia-nvjpeg==${NVJPEG_VERSION:-13.3.2.43}"
fi
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .gpu/whl .
# the first N/2 JPEGs of each class folder, flat
for d in "$DATA"/*/; do
    find "$d" -maxdepth 1 -iname '*.jpg' | sort | head -n $((N / 2)) | while read -r f; do
        cp "$f" ".gpu/imgs/$(basename "$d")-$(basename "$f")"
    done
done
# real photos of other kinds for the pixel/feature parity figures: the cars, 40 catbreeds JPEGs
for f in ../shared/data/cars/train/*/*.jpg ../shared/data/cars/test/*.jpg; do
    [ -f "$f" ] && cp "$f" ".gpu/imgs/cars-$(basename "$f")"
done
find ../shared/data/catbreeds/images -maxdepth 1 -iname '*.jpg' 2>/dev/null | sort | head -n 40 | while read -r f; do
    cp "$f" ".gpu/imgs/catbreeds-$(basename "$f")"
done
echo "$(ls .gpu/imgs | wc -l) JPEGs, $(ls .gpu/whl | wc -l) wheels: $(du -sh .gpu | cut -f1) in .gpu/ (at most 64 MiB travel)"
