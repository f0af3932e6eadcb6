"""The TensorFlow ops `export` emits, for every backbone kind and head kind: where ALLOWED_OPS comes from.

    python bench/export_ops.py                  # every Keras application + the tiny test models, all heads
    python bench/export_ops.py --apps mobilenet_v2,resnet50   # some applications only
    python bench/export_ops.py --apps none      # the tiny models only (a minute)

For each backbone it builds the exported module exactly as ``export`` does (``exporter._module``:
``serving_default`` and ``predict_bytes``) over synthetic heads of every scorer and probability kind
(linear / RBF, binary / multi-class, with and without PCA, temperature / Platt / softmax / one-vs-rest
sigmoid), traces both signatures and lists the op of every node, in the graph and in every function of
its library. Keras applications use untrained weights (the ops do not depend on them) and are traced, not
saved (a saved VGG19 is 550 MB); the tiny Keras CNN, and the same network as a SavedModel and as a frozen
GraphDef backbone (the graph kind), are really saved with ``tf.saved_model.save`` so the saver's own
functions are listed too. Test-time flip, several layers at once and the mixed precisions are traced on
the tiny CNN.

It prints the sorted op set and its difference with ``pipeline.export.allowed_ops.ALLOWED_OPS``; paste
new ops there only after checking each is a pure tensor op (no file, no serialized graph or function,
no Python). ``tests/export/test_allowed_ops.py`` checks the exports the tests can build against the list.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402


def synthetic_heads(d: int) -> list:
    """An ArrayHead of every scorer x probabilities x (binary, 3 classes) x (PCA or not) over d features."""
    from pipeline.heads.arrayhead import ArrayHead

    rng = np.random.default_rng(0)
    heads = []
    for n in (2, 3):
        for pca in (None, min(4, d)):
            width = pca or d
            base = {"scale.mean": rng.normal(size=d), "scale.scale": np.ones(d)}
            if pca:
                base.update({"pca.components": rng.normal(size=(pca, d)), "pca.mean": np.zeros(d)})
            rows, cols = (1 if n == 2 else n), (1 if n == 2 else n)
            linear = {"linear.coef": rng.normal(size=(rows, width)), "linear.intercept": np.zeros(rows)}
            n_sv = np.full(n, 2, np.int64)
            rbf = {"rbf.support_vectors": rng.normal(size=(2 * n, width)),
                   "rbf.dual_coef": rng.normal(size=(n - 1, 2 * n)),
                   "rbf.intercept": np.zeros(n * (n - 1) // 2), "rbf.n_support": n_sv, "rbf.gamma": np.asarray(0.1)}
            platt = {"calibration.a": -np.ones(cols), "calibration.b": np.zeros(cols)}
            temp = {"calibration.alpha": np.asarray(1.5)}
            classes = [f"c{i}" for i in range(n)]
            for scorer, arrays in (("linear", linear), ("rbf", rbf)):
                heads.append(ArrayHead(classes, {**base, **arrays, **temp}, scorer, "temperature"))
                heads.append(ArrayHead(classes, {**base, **arrays, **platt}, scorer, "platt"))
            heads.append(ArrayHead(classes, {**base, **linear}, "linear", "sigmoid" if n == 2 else "softmax"))
            ovr = {"linear.coef": rng.normal(size=(n, width)), "linear.intercept": np.zeros(n),
                   "ovr.alpha": np.ones(n), "ovr.threshold": np.full(n, 0.5)}
            heads.append(ArrayHead(classes, {**base, **ovr}, "linear", "ovr_sigmoid"))
    return heads


def traced_ops(bb, heads, decode: bool = True) -> set[str]:
    """The ops of export's module for `bb`: ``serving_default`` with each head, ``predict_bytes`` (the same
    head ops after TensorFlow's image decoding, the same for every backbone) with the first unless not
    `decode` (traced, not saved)."""
    from pipeline.export.allowed_ops import graph_ops
    from pipeline.export.exporter import _module

    ops = set()
    for i, head in enumerate(heads):
        module = _module(bb, head)
        for fn in (module.serve, module.predict_bytes) if i == 0 and decode else (module.serve,):
            ops |= graph_ops(fn.get_concrete_function().graph.as_graph_def())
    return ops


def saved_ops(bb, head, folder: Path) -> set[str]:
    """The ops of a real export (saved_model.pb: graph, every function, the saver's) of `bb` with `head`."""
    from tensorflow.core.protobuf import saved_model_pb2

    from pipeline.export.allowed_ops import graph_ops
    from pipeline.export.exporter import _module, _write_saved_model

    out = _write_saved_model(folder / f"export-{len(list(folder.iterdir()))}", _module(bb, head), {"x": 1})
    sm = saved_model_pb2.SavedModel.FromString((out / "saved_model.pb").read_bytes())
    return set().union(*(graph_ops(mg.graph_def) for mg in sm.meta_graphs))


def tiny_backbones(folder: Path):
    """(backbone, saved?) for the tiny CNN as a Keras app (plain, flip, two layers, mixed precisions),
    as a SavedModel and as a frozen GraphDef (the graph kind)."""
    import keras
    from models_for_tests import SIZE, export_saved_model, frozen_graph_def, tiny_keras_model

    from pipeline.backbones import create_backbone
    from pipeline.backbones.keras_apps import KERAS_APPS, KerasApp

    def TinyCNN(weights=None, include_top=True, classifier_activation=None):  # noqa: N802
        model = tiny_keras_model()
        return keras.Model(model.input, model.get_layer("logits").output)

    KERAS_APPS["tiny_cnn"] = KerasApp("TinyCNN", SIZE, "tf", "mobilenet")
    keras.applications.TinyCNN = TinyCNN
    yield create_backbone("tiny_cnn", "penultimate", weights="random"), True
    yield create_backbone("tiny_cnn", "penultimate", weights="random", tta="flip"), False
    yield create_backbone("tiny_cnn", "penultimate,logits", weights="random"), False
    for precision in ("bfloat16", "float16"):
        yield create_backbone("tiny_cnn", "penultimate", weights="random", precision=precision), False
    tiny = tiny_keras_model()
    sm = export_saved_model(tiny, folder / "backbone_sm")
    yield create_backbone(sm, "penultimate", input_size=SIZE, scaling="tf"), True
    path, inp, _ = frozen_graph_def(tiny, folder / "frozen.pb")
    yield create_backbone(path, "penultimate", input_size=SIZE, scaling="tf", input_tensor=inp), True
    yield create_backbone(path, "penultimate", input_size=SIZE, scaling="caffe", input_tensor=inp), False


def main(argv=None) -> int:
    from pipeline.backbones import create_backbone
    from pipeline.backbones.keras_apps import KERAS_APPS
    from pipeline.export.allowed_ops import ALLOWED_OPS, CHECKPOINT_OPS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--apps", default="all", help="Keras applications to trace: all, none or a comma list")
    a = p.parse_args(argv)
    apps = list(KERAS_APPS) if a.apps == "all" else [] if a.apps == "none" else a.apps.split(",")
    found: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for bb, save in tiny_backbones(Path(tmp)):
            bb.load()
            heads = synthetic_heads(bb.dim)
            ops = traced_ops(bb, heads) | (saved_ops(bb, heads[0], Path(tmp)) if save else set())
            found[f"{bb.kind}:{bb.name} {bb.layer} tta={bb.tta} {getattr(bb, 'precision', '')}"] = ops
        for name in apps:
            bb = create_backbone(name, "penultimate", weights="random")
            bb.load()
            found[f"keras:{name}"] = traced_ops(bb, synthetic_heads(bb.dim)[:1], decode=False)
            print(f"{name}: {len(found[f'keras:{name}'])} ops", file=sys.stderr, flush=True)
    every = set().union(*found.values())
    print("ops emitted by export:", len(every), "(checkpoint ops, allowed in the saver only:",
          sorted(every & CHECKPOINT_OPS), ")")
    print(", ".join(f'"{o}"' for o in sorted(every - CHECKPOINT_OPS)))
    for what, ops in found.items():
        print(f"{what}: {len(ops)} ops, not on the list: {sorted(ops - ALLOWED_OPS - CHECKPOINT_OPS) or 'none'}")
    missing = sorted(every - ALLOWED_OPS - CHECKPOINT_OPS)
    print("not on ALLOWED_OPS:", missing or "none")
    if a.apps == "all":
        print("on ALLOWED_OPS but not emitted here:", sorted(ALLOWED_OPS - every) or "none")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
