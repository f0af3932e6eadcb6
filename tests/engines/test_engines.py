"""The engine registry: each name is one Engine class, imported on first use; nothing imports Ray until a
Ray run connects, and an engine's own command-line flags are refused with another engine."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.engines import REGISTRY, engine_class
from pipeline.engines.base import Engine
from pipeline.options import ENGINES


def test_each_name_is_one_engine_class_named_so():
    for name in REGISTRY:
        cls = engine_class(name)
        assert issubclass(cls, Engine) and cls.name == name
    assert tuple(REGISTRY) == ENGINES  # options checks the names without importing the engines


def test_import_pipeline_and_a_local_run_never_import_ray(tmp_path):
    from conftest import make_class_tree

    data = make_class_tree(tmp_path / "data", per_class=1)
    code = ("import sys, pipeline; pipeline.featurize(sys.argv[1], out=sys.argv[2], progress=False); "
            "from pipeline.engines import engine_class; engine_class('ray'); import pipeline.cli; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code, str(data), str(tmp_path / "s")], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def test_another_engines_flags_are_refused_naming_them(tmp_path, capsys):
    assert main(["featurize", str(tmp_path), "--address", "auto"]) == 2
    assert "--address and --partitions apply to --engine ray" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tflite_featurize_run_imports_neither_tensorflow_nor_keras_nor_pandas(tmp_path):
    """A cold TFLite run starts on the LiteRT runtime alone (importing TensorFlow takes seconds); bcolz is
    imported without pandas, which stays importable afterwards."""
    from conftest import make_class_tree

    data = make_class_tree(tmp_path / "data", per_class=2)
    code = ("import sys; from pipeline.cli import main; "
            "rc = main(['featurize', sys.argv[1], '--out', sys.argv[2], '--no-progress']); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'jax', "
            "'pandas')); import pandas; print(rc, heavy, 'bcolz' in sys.modules); "
            "print(sorted(m for m in sys.modules if m.endswith('ImagePlugin')))")
    out = subprocess.run([sys.executable, "-c", code, str(data), str(tmp_path / "s")], capture_output=True,
                         text=True, check=True).stdout.split("\n")
    assert out[-3] == "0 [] True"  # the run wrote its store with bcolz
    # and nothing a run of JPEGs never uses: Pillow's plugins are the allowed formats' only (not its ~40)
    assert out[-2] == str(sorted(f"PIL.{f}ImagePlugin" for f in ("Bmp", "Gif", "Jpeg", "Png", "Ppm", "Tiff", "WebP")))


def test_a_tflite_featurize_run_does_not_import_what_it_never_uses(tmp_path):
    """Modules a cold CPU run of JPEGs has no use for stay out of its start-up (issue 30): the GPU decode path,
    importlib.metadata (versions are read from the metadata folders), bcolz's own test suite."""
    from conftest import make_class_tree

    data = make_class_tree(tmp_path / "data", per_class=2)
    unused = ["pipeline.decode.gpujpeg", "pipeline.decode.jaxresize", "importlib.metadata", "unittest",
              "bcolz.tests", "ai_edge_litert.schema_py_generated"]
    code = ("import sys; from pipeline.cli import main; "
            "rc = main(['featurize', sys.argv[1], '--out', sys.argv[2], '--no-progress']); "
            f"print(rc, [m for m in {unused!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code, str(data), str(tmp_path / "s")], capture_output=True,
                         text=True, check=True).stdout
    assert out.split("\n")[-2] == "0 []"
