"""The run report names the stage that limits featurize, from measured busy seconds per worker."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.featurizer.stages import StageClock, hint

KEYS = {"read_s", "decode_s", "forward_s", "write_s", "images_per_s", "bottleneck"}


def _stages(out) -> dict:
    return json.loads((out / "report.json").read_text())["stages"]


@pytest.mark.slow
def test_large_pngs_on_one_worker_are_decode_bound(tmp_path, capsys):
    # 2400x2400 noise PNGs take far longer to decode than the bundled TFLite model takes to run, and
    # than committing their rows (a few fsyncs, slow on a busy disk)
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(6):  # decoding grows with the images, committing them stays a commit or two
        arr = np.random.default_rng(i).integers(0, 256, (2400, 2400, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"big{i}.png", compress_level=1)
    out = tmp_path / "store"
    assert main(["featurize", str(folder), "--workers", "1", "--out", str(out), "--no-progress"]) == 0
    stages = _stages(out)
    assert KEYS <= set(stages)
    assert stages["bottleneck"] == "decode"
    assert stages["decode_s"] > stages["forward_s"] > 0
    assert stages["workers"] == {"read": 1, "decode": 1, "forward": 1, "write": 1}
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith("stages: ") and "bottleneck: decode" in printed


@pytest.mark.slow
def test_tiny_jpegs_are_forward_bound(tmp_path, capsys):
    folder = tmp_path / "tiny"
    folder.mkdir()
    for i in range(24):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"t{i}.jpg")
    out = tmp_path / "store"
    assert main(["featurize", str(folder), "--out", str(out), "--no-progress"]) == 0
    stages = _stages(out)
    assert stages["bottleneck"] == "forward" and stages["images"] == 24
    assert stages["forward_s"] > stages["decode_s"]
    assert stages["images_per_s"] > 0
    assert "bottleneck: forward" in capsys.readouterr().out.strip().splitlines()[-1]
    # a fully cached re-run featurizes nothing and names no bottleneck
    assert main(["featurize", str(folder), "--out", str(out), "--no-progress"]) == 0
    assert _stages(out)["bottleneck"] is None
    assert "nothing was featurized" in capsys.readouterr().out


def test_bottleneck_counts_workers_per_stage():
    # 8 s of decoding spread over 4 workers keeps up with 3 s of network time in one thread
    clock = StageClock()
    clock.busy.update(read=0.5, decode=8.0, forward=3.0, write=0.2)
    ctx = {"cores": 16, "gpu": False, "per_image": False, "kind": "keras"}
    r = clock.report(100, 4.0, {"read": 4, "decode": 4, "forward": 1, "write": 1}, ctx)
    assert r["bottleneck"] == "forward" and r["images_per_s"] == 25.0
    r = clock.report(100, 8.0, {"read": 1, "decode": 1, "forward": 1, "write": 1}, ctx)
    assert r["bottleneck"] == "decode"


@pytest.mark.parametrize("stage, workers, ctx, expected", [
    ("decode", 2, {"cores": 16, "gpu": False, "per_image": True}, "raise --workers to 16"),
    ("decode", 16, {"cores": 16, "gpu": False, "per_image": True}, "store the images smaller"),
    ("forward", 1, {"cores": 16, "gpu": False, "per_image": False, "bf16": True}, "--precision bfloat16"),
    ("forward", 1, {"cores": 16, "gpu": False, "per_image": False}, "a smaller backbone, or a GPU"),
    ("forward", 4, {"cores": 16, "gpu": False, "per_image": True}, "raise --workers to 16"),
    ("forward", 1, {"cores": 16, "gpu": True, "per_image": False}, "--batch-size"),
    ("read", 4, {"cores": 16, "gpu": False, "per_image": False}, "local SSD"),
    ("forward", 16, {"cores": 16, "gpu": False, "per_image": True, "kind": "tflite"}, "a smaller backbone"),
])
def test_hints_are_concrete(stage, workers, ctx, expected):
    w = {"read": workers, "decode": workers, "forward": workers if ctx["per_image"] else 1, "write": 1}
    assert expected in hint(stage, w, **ctx)


@pytest.mark.parametrize("flags, kind, precision, suggested", [
    ("fpu avx2 avx512f avx512_bf16 avx512_vnni", "keras", "float32", True),
    ("fpu avx2 amx_bf16 amx_tile amx_int8", "keras", "float32", True),
    ("fpu avx2 fma avx512f avx512_vnni", "keras", "float32", False),  # bfloat16 would be emulated: slower
    ("fpu avx2 avx512_bf16", "keras", "bfloat16", False),  # already computing in bfloat16
    ("fpu avx2 avx512_bf16", "tflite", None, False),  # no precision to choose
])
def test_bfloat16_is_suggested_only_where_the_cpu_computes_it_natively(tmp_path, monkeypatch, flags, kind,
                                                                        precision, suggested):
    from types import SimpleNamespace

    from pipeline.backbones import keras_apps
    from pipeline.featurizer.stages import bf16_pays

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    monkeypatch.setattr(keras_apps, "CPUINFO", cpuinfo)
    bb = SimpleNamespace(kind=kind, **({"precision": precision} if precision else {}))
    assert bf16_pays(bb) is suggested
    w = {"read": 2, "decode": 2, "forward": 1, "write": 1}
    text = hint("forward", w, cores=2, gpu=False, per_image=False, kind=kind, bf16=bf16_pays(bb))
    assert ("--precision bfloat16" in text) is suggested and "a smaller backbone" in text
