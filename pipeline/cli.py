"""Command line: parse arguments and forward to the library functions a Python user imports.

Exit status: 0 success, 2 bad usage, 1 failure; errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .backbones.base import describe
from .errors import PipelineError, UsageError

log = logging.getLogger("pipeline")


def _word_or_number(word: str, cast, low, option: str):
    """An argparse type accepting `word` or a number: a float above `low`, or an int of at least `low`."""
    def parse(value: str):
        if value == word:
            return value
        try:
            v = cast(value)
        except ValueError:
            v = None
        if v is None or (v <= low if cast is float else v < low):
            kind = "a positive number" if cast is float else f"an integer >= {low}"
            raise argparse.ArgumentTypeError(f"{option} must be {word!r} or {kind}, got {value!r}")
        return v
    return parse


_C = _word_or_number("auto", float, 0, "--C")
_folds = _word_or_number("loo", int, 2, "--folds")


def _C_per_head(value: str):
    """--C for compare: 'auto', a number, or per head: 'linear_svm=0.01,logreg=0.1'."""
    if "=" not in value:
        return _C(value)
    out = {}
    for item in value.split(","):
        head, _, c = item.partition("=")
        out[head.strip()] = _C(c.strip())
    return out


def _positive_int(option: str):
    """An argparse type accepting an integer >= 1 for `option`."""
    def parse(value: str) -> int:
        try:
            v = int(value)
        except ValueError:
            v = 0
        if v < 1:
            raise argparse.ArgumentTypeError(f"{option} must be an integer >= 1, got {value!r}")
        return v
    return parse


def _sample(value: str):
    try:
        v = float(value)
    except ValueError:
        v = -1
    if v <= 0:
        raise argparse.ArgumentTypeError(f"--sample must be a number of images per class or a fraction, got {value!r}")
    return v if v < 1 else int(v)


def _backbone_options(p: argparse.ArgumentParser, with_layer: bool = True) -> None:
    p.add_argument("--backbone", default="mobilenet_v2_quant",
                   help="registry name, .tflite/.pb file, SavedModel folder or hub:HANDLE (default: %(default)s)")
    if with_layer:
        p.add_argument("--layer", default="penultimate",
                       help="penultimate (default), logits, predictions (the class probabilities) or a layer/tensor "
                            "name; several separated by commas (one forward pass, one store each: --out must "
                            "contain {layer})")
    p.add_argument("--weights", help="Keras application weights: imagenet (default), a local .weights.h5/.h5 file, or random")
    p.add_argument("--input-size", type=_positive_int("--input-size"), help="override the backbone's input size (square)")
    p.add_argument("--scaling", help="override the pixel scaling: caffe, tf, torch, unit, raw, ...")
    p.add_argument("--crop-fraction", type=float, help="centre crop fraction (1.0: largest centre square)")
    p.add_argument("--input-tensor", help="input tensor name of a frozen GraphDef without a preset")
    p.add_argument("--precision", choices=["float32", "bfloat16", "float16"],
                   help="compute precision of Keras applications (default float32; bfloat16 on CPUs with "
                        "AVX-512 BF16/AMX, float16 on GPUs)")
    p.add_argument("--keras-backend", choices=["tensorflow", "jax", "torch"],
                   help="Keras 3 backend running Keras applications (default: $KERAS_BACKEND, else tensorflow); "
                        "jax and torch never import TensorFlow")
    p.add_argument("--jit-compile", action="store_true", help="XLA-compile a Keras application on TensorFlow")


def _backbone_kwargs(a) -> dict:
    return dict(input_size=a.input_size, scaling=a.scaling, crop_fraction=a.crop_fraction,
                input_tensor=a.input_tensor, precision=a.precision, keras_backend=a.keras_backend,
                jit_compile=a.jit_compile)


TRUST_HELP = ("also load an old .joblib head (format head-1): it is a pickle and can run any code in it; "
              "only for files you trust (convert it once with `convert`)")

def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: a Ray cluster (DATA_DIR may be s3://, gs:// or file://)")
    p.add_argument("--address", help="with --engine ray: join this cluster (auto, or ray://HOST:PORT); "
                                     "default: start a local one sized to this machine")
    p.add_argument("--partitions", type=int, help="with --engine ray: split the sorted listing into N partitions, "
                                                  "each committed when done (default: one per 1000 images)")


def _engine_kwargs(a) -> dict:
    if a.engine != "ray":
        if a.address or a.partitions:
            raise UsageError("--address and --partitions apply to --engine ray")
        return {}
    from .distributed import RayCluster

    return {"engine": "ray", "cluster": RayCluster(a.address, a.partitions)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description="tf-feature-pipeline: frozen ImageNet "
                                "CNN features of image folders, cached with bcolz, classified by scikit-learn heads")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log more, show TensorFlow's and TFLite's own notices, and show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("featurize", help="images below DATA_DIR -> a feature store")
    f.add_argument("data_dir")
    _backbone_options(f)
    f.add_argument("--out", help="feature store folder (default: features/<folder>-<backbone>-<layer>)")
    f.add_argument("--batch-size", type=_positive_int("--batch-size"), help="images per network call")
    f.add_argument("--workers", type=_positive_int("--workers"),
                   help="decoding threads or processes (default: the usable cores)")
    f.add_argument("--decode", choices=["auto", "thread", "process"], default="auto",
                   help="decode in a thread pool or in worker processes (auto: processes from 8 cores on)")
    f.add_argument("--unlabelled", action="store_true", help="ignore sub-folders as classes")
    f.add_argument("--labels", metavar="CSV", help="labels from a CSV (id,label) instead of sub-folders")
    f.add_argument("--id-column", help="the CSV column of image ids (default: 'id', else the first)")
    f.add_argument("--label-column", help="the CSV column of labels (default: 'label', else the second)")
    f.add_argument("--multi-label", action="store_true",
                   help="each label cell holds several labels separated by spaces or '|' (e.g. Planet's tags); "
                        "train then fits one-vs-rest heads with a threshold per label")
    f.add_argument("--prune", action="store_true", help="drop the rows of files no longer in DATA_DIR")
    f.add_argument("--sample", type=_sample, help="featurize only N images per class (or a fraction), for a quick try")
    f.add_argument("--tta", choices=["flip"], help="test-time augmentation: flip averages the features of each "
                   "image and its mirror (score follows the head's choice)")
    f.add_argument("--no-follow-links", action="store_true",
                   help="do not read symlinks leading outside DATA_DIR (for folders you do not trust)")
    f.add_argument("--overwrite", action="store_true", help="replace a store made with other settings")
    f.add_argument("--strict", action="store_true", help="fail if any image had to be skipped")
    f.add_argument("--no-progress", action="store_true")
    _engine_options(f)

    t = sub.add_parser("train", help="fit a head on a feature store")
    t.add_argument("features_dir")
    t.add_argument("--head", default="linear_svm", choices=["linear_svm", "svm", "logreg"])
    t.add_argument("--C", type=_C, default="auto", help="'auto' (cross-validated, default) or a number")
    t.add_argument("--folds", type=_folds, default=5, help="CV folds for --C auto (default 5)")
    t.add_argument("--out", required=True, help="head file to write (NAME.head.npz: arrays and JSON, no pickle)")
    t.add_argument("--force", action="store_true", help="replace --out even if it is not a head this tool wrote")
    t.add_argument("--holdout", type=float, default=0.0, help="fraction held out for validation, e.g. 0.2")
    t.add_argument("--split", default="hash", choices=["hash", "stratified"],
                   help="hash: stable as files are added; stratified: exact class proportions")
    t.add_argument("--group-by", metavar="REGEX", help="keep images whose file names share this match together")
    t.add_argument("--groups", metavar="CSV", help="a CSV giving each image a group (with --group-column)")
    t.add_argument("--group-column", help="the --groups CSV column holding the group")
    t.add_argument("--sample", type=_sample, help="train on N images per class (or a fraction, e.g. 0.1)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--pca", type=_positive_int("--pca"), help="reduce the standardised features to N principal components first")
    t.add_argument("--class-weight", choices=["balanced"],
                   help="balanced: weigh classes inversely to their image counts (imbalanced folders)")
    t.add_argument("--report", metavar="DIR", help="write an HTML report of the cross-validated predictions")
    t.add_argument("--learning-curve", action="store_true",
                   help="accuracy against training images per class (printed, and plotted in --report)")

    s = sub.add_parser("score", help="predict every image below DATA_DIR, or every row of a feature store, into a CSV")
    s.add_argument("model")
    s.add_argument("data_dir")
    s.add_argument("--out", required=True, help="CSV to write")
    s.add_argument("--cache", help="feature store to reuse/extend (default: features/score-cache/<folder>-"
                                   "<backbone>-<layer>-<hash of the folder's path and the backbone>)")
    s.add_argument("--no-cache", action="store_true", help="featurize into a temporary store, removed afterwards")
    s.add_argument("--force", action="store_true", help="replace --out even if it is not a CSV this tool wrote")
    s.add_argument("--kaggle", metavar="CLASS", help="write id,label with the probability of CLASS")
    s.add_argument("--clip", type=float, help="clip Kaggle probabilities to [CLIP, 1-CLIP], e.g. 0.02")
    s.add_argument("--reject-below", type=float, metavar="P",
                   help="write 'unknown' as the prediction when the top probability is below P "
                        "(pick P from the coverage plot of an evaluate/train --report)")
    s.add_argument("--no-follow-links", action="store_true",
                   help="do not read symlinks leading outside DATA_DIR (for folders you do not trust)")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    _engine_options(s)

    e = sub.add_parser("evaluate", help="metrics of a head on a labelled feature store")
    e.add_argument("model")
    e.add_argument("features_dir")
    e.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--report", metavar="DIR", help="also write an HTML report (index.html + PNGs) to DIR")

    c = sub.add_parser("compare", help="cross-validated accuracy of heads on feature stores")
    c.add_argument("features_dirs", nargs="+")
    c.add_argument("--heads", default="linear_svm,logreg")
    c.add_argument("--C", type=_C_per_head, default="auto",
                   help="'auto' (CV, default), a number, or per head: linear_svm=0.01,logreg=0.1")
    c.add_argument("--folds", type=_folds, default=5, help="integer or 'loo' (default 5)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--pca", type=_positive_int("--pca"), help="reduce the standardised features to N principal components first")
    c.add_argument("--json", action="store_true")
    c.add_argument("--no-progress", action="store_true", help="no line on stderr as each head starts and ends")

    i = sub.add_parser("predict-imagenet", help="top-k ImageNet classes of images")
    i.add_argument("images", nargs="+")
    _backbone_options(i, with_layer=False)
    i.add_argument("--top", type=_positive_int("--top"), default=5)

    sp = sub.add_parser("split", help="write the train/validation split of a store's labelled images to a CSV")
    sp.add_argument("features_dir")
    sp.add_argument("--holdout", type=float, default=0.2, help="validation fraction (default 0.2)")
    sp.add_argument("--split", default="hash", choices=["hash", "stratified"])
    sp.add_argument("--group-by", metavar="REGEX")
    sp.add_argument("--groups", metavar="CSV")
    sp.add_argument("--group-column")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True, help="CSV to write: path,label,split")
    sp.add_argument("--force", action="store_true", help="replace --out even if it is not a CSV this tool wrote")

    q = sub.add_parser("suspects", help="images whose label the cross-validated head doubts most")
    q.add_argument("features_dir")
    q.add_argument("--head", default="logreg", choices=["linear_svm", "svm", "logreg"])
    q.add_argument("--C", type=_C, default="auto")
    q.add_argument("--folds", type=_folds, default=5)
    q.add_argument("--top", type=int, default=20, help="how many to list (0: all)")
    q.add_argument("--csv", help="also write the full ranked list to this CSV")
    q.add_argument("--force", action="store_true", help="replace --csv even if it is not a CSV this tool wrote")

    cv = sub.add_parser("convert", help="rewrite a head file (e.g. an old .joblib) as a .head.npz (no pickle)")
    cv.add_argument("model")
    cv.add_argument("--out", required=True, help="head file to write (NAME.head.npz)")
    cv.add_argument("--trust-pickle", action="store_true",
                    help="required to read an old .joblib head: it is a pickle and can run code; only for files you trust")

    ex = sub.add_parser("export", help="a head with its backbone -> one SavedModel or TFLite model (image -> probabilities)")
    ex.add_argument("model", help="head file (.head.npz)")
    ex.add_argument("--format", required=True, choices=["saved_model", "tflite"])
    ex.add_argument("--out", required=True, help="SavedModel folder or .tflite file to write")
    ex.add_argument("--force", action="store_true", help="replace an existing --out")

    v = sub.add_parser("verify", help="check a feature store's integrity")
    v.add_argument("features_dir")

    sub.add_parser("backbones", help="list the registered backbones")

    x = sub.add_parser("export-features", help="a feature store -> a .parquet or .npz file other tools read")
    x.add_argument("features_dir")
    x.add_argument("--out", required=True, help="file to write; the format comes from the extension")
    x.add_argument("--force", action="store_true", help="replace an existing file")

    m = sub.add_parser("import-features", help="a .parquet or .npz file of features -> a feature store")
    m.add_argument("file")
    m.add_argument("--out", required=True, help="feature store folder to create")
    m.add_argument("--id-column", default="id", help="column of unique ids (default: %(default)s)")
    m.add_argument("--features-column", default="features", help="column of vectors (default: %(default)s)")
    m.add_argument("--label-column", help="column of labels (default: 'label' when the file has one)")

    sv = sub.add_parser("serve", help="serve a head over HTTP: POST /predict, GET /health, GET /model, /docs")
    sv.add_argument("model", help="a .head.npz head, or a SavedModel folder or .tflite file written by `export`")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: %(default)s, this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    sv.add_argument("--trust-pickle", action="store_true", help="allow loading an old pickle-based (joblib) head file")
    for flag, kind, what in [("--max-body-bytes", int, "request body size (413 beyond)"),
                             ("--max-pixels", int, "pixels per image, checked before decoding (422 beyond)"),
                             ("--max-images", int, "images per request (413 beyond)"),
                             ("--timeout-s", float, "seconds per request (504 beyond)"),
                             ("--max-in-flight", int, "requests in progress at once (503 with Retry-After beyond)"),
                             ("--batch-wait-ms", float, "how long to gather concurrent requests into one batch"),
                             ("--batch-size", int, "images per network call (default: the backbone's)")]:
        sv.add_argument(flag, type=kind, help=what)

    d = sub.add_parser("demo", help="the whole flow offline on the bundled cars sample")
    d.add_argument("--features", default="features")
    d.add_argument("--models", default="models")
    d.add_argument("--no-progress", action="store_true")
    return p


def cmd_featurize(a):
    from .runner import featurize

    run = featurize(a.data_dir, a.backbone, a.layer, a.out, a.weights, labelled=False if a.unlabelled else None,
                    labels=a.labels, id_column=a.id_column, label_column=a.label_column, prune=a.prune,
                    sample=a.sample, follow_links=not a.no_follow_links, multi_label=a.multi_label,
                    overwrite=a.overwrite, batch_size=a.batch_size, workers=a.workers, decode=a.decode,
                    progress=not a.no_progress, strict=a.strict, report=True, tta=a.tta, **_backbone_kwargs(a),
                    **_engine_kwargs(a))
    print(run.summary())


def cmd_train(a):
    from .evaluation import format_metrics
    from .training import train

    from .outputs import check_output

    check_output(a.out, "head", force=a.force)
    if a.learning_curve:
        from .store import FeatureStore

        if FeatureStore.open(a.features_dir).multi_label:
            raise UsageError("--learning-curve is for single-label stores; this one is multi-label")
    clf = train(a.features_dir, head=a.head, C=a.C, folds=a.folds, seed=a.seed, holdout=a.holdout, split=a.split,
                group_by=a.group_by, groups=a.groups, group_column=a.group_column, sample=a.sample, pca=a.pca,
                class_weight=a.class_weight)
    path = clf.save(a.out)
    m = clf.metrics
    if clf.multi_label:
        _train_multilabel_summary(a, clf, path)
        return
    cv = f", {m['cv_folds']}-fold CV accuracy {m['cv_accuracy']:.4f}" if "cv_accuracy" in m else ""
    print(f"{a.head} C={m['C']:g} on {m['n_train']} images, {len(clf.classes_)} classes{cv} -> {path}")
    print(f"probabilities: {m['calibration']}" + (", classes weighted balanced" if m.get("class_weight") else ""))
    small = m.get("unvalidated_classes") or []
    if small:
        print(f"{len(small)} classes have one image: trained on, too small to validate: "
              f"{', '.join(small[:20])}{' ...' if len(small) > 20 else ''}")
    if "validation" in m:
        v = m["validation"]
        print(f"validation ({v['n']} held-out images):\n{format_metrics(v)}")
        if v["leakage"]:
            print(f"warning: {len(v['leakage'])} validation images are identical to training images")
    if a.report or a.learning_curve:
        _train_report(a, m)


def _train_multilabel_summary(a, clf, path) -> None:
    from .evaluation import format_metrics
    from .multilabel import summary

    print(summary(clf, path))
    if "validation" in clf.metrics:
        v = clf.metrics["validation"]
        print(f"validation ({v['n']} held-out images):\n{format_metrics(v)}")
    if a.report:
        from .multilabel import cross_validated
        from .report import report_predictions
        from .store import FeatureStore

        store = FeatureStore.open(a.features_dir)
        m, Y, P, rows = cross_validated(store, a.head, clf.metrics["C"], a.folds, a.seed, a.pca)
        page = report_predictions(a.report, m, Y, P, rows, store, title=f"{a.head} on {store.root.name}: "
                                  f"cross-validated predictions (one-vs-rest tags)",
                                  extra={"head": a.head, "C": clf.metrics["C"], "folds": a.folds,
                                         "features": f"{store.root} ({describe(store.spec)})"})
        print(f"report -> {page}")


def _train_report(a, m: dict) -> None:
    from .evaluation import cross_validated
    from .heads import learning_curve
    from .report import report_predictions
    from .store import FeatureStore

    store = FeatureStore.open(a.features_dir)
    curve = None
    if a.learning_curve:
        X, y = store.labelled()
        curve = learning_curve(a.head, X, y, m["C"], 5 if a.folds == "loo" else a.folds, a.seed, pca=a.pca)
        print("learning curve (held-out accuracy by training images per class): " +
              ", ".join(f"{k}: {v:.3f}" for k, v in zip(curve["per_class"], curve["valid_mean"])))
    if a.report:
        metrics, y, proba, rows = cross_validated(store, a.head, m["C"], a.folds, a.seed, a.pca)
        page = report_predictions(a.report, metrics, y, proba, rows, store, curve=curve,
                                  title=f"{a.head} on {store.root.name}: cross-validated predictions",
                                  extra={"head": a.head, "C": m["C"], "folds": a.folds, "PCA": a.pca or "none",
                                         "features": f"{store.root} ({describe(store.spec)})"})
        print(f"report -> {page}")


def cmd_score(a):
    from .scoring import score

    run = score(a.model, a.data_dir, a.out, cache=a.cache, no_cache=a.no_cache, kaggle=a.kaggle, clip=a.clip,
                progress=not a.no_progress, force=a.force, follow_links=not a.no_follow_links,
                reject_below=a.reject_below, trusted=a.trust_pickle, **_engine_kwargs(a))
    print(run.summary())
    print(f"predictions -> {a.out}")


def cmd_evaluate(a):
    from .classifier import load
    from .evaluation import format_metrics, predictions
    from .store import FeatureStore

    model, store = load(a.model, trusted=a.trust_pickle), FeatureStore.open(a.features_dir)
    m, y, proba, rows = predictions(model, store)
    print(json.dumps(m) if a.json else format_metrics(m))
    if a.report:
        from .report import report_predictions

        page = report_predictions(a.report, m, y, proba, rows, store,
                                  title=f"{os.path.basename(a.model)} on {store.root.name}",
                                  extra={"model": a.model, "features": f"{store.root} ({describe(store.spec)})"})
        print(f"report -> {page}", file=sys.stderr if a.json else sys.stdout)


def cmd_compare(a):
    from .evaluation import compare

    rows = compare(a.features_dirs, a.heads.split(","), a.C, a.folds, a.seed, a.pca, progress=not a.no_progress)
    if a.json:
        print(json.dumps(rows))
        return
    heads = list(dict.fromkeys(r["head"] for r in rows))
    sets = list(dict.fromkeys((r["features"], r["backbone"], r["layer"], r["dim"], r["n"]) for r in rows))
    cell = {(r["features"], r["head"]): f"{r['accuracy']:.4f} (C={r['C']:g})" for r in rows}
    width = max(len("features"), *(len(f) for f, *_ in sets))
    folds = "leave-one-out" if a.folds == "loo" else f"{a.folds}-fold"
    print(f"cross-validated accuracy ({folds}, seed {a.seed}{f', PCA {a.pca}' if a.pca else ''})")
    print(f"{'features':<{width}}  {'backbone':<20} {'layer':<12} {'D':>5} {'n':>6}  " +
          "  ".join(f"{h:<18}" for h in heads))
    for f, backbone, layer, dim, n in sets:
        print(f"{f:<{width}}  {backbone:<20} {layer:<12} {dim:>5} {n:>6}  " +
              "  ".join(f"{cell.get((f, h), ''):<18}" for h in heads))


def cmd_predict_imagenet(a):
    from .imagenet import predict_imagenet

    for path, top in predict_imagenet(a.images, a.backbone, a.top, a.weights, **_backbone_kwargs(a)):
        print(f"{path}: " + ", ".join(f"{label.split(',')[0]} ({p:.3f})" for label, p in top))


def cmd_split(a):
    from collections import Counter

    from .splits import validation_mask, write_split_csv
    from .store import FeatureStore
    from .training import groups_by_path

    store = FeatureStore.open(a.features_dir)
    _, y, rows = store.labelled(with_rows=True)
    valid = validation_mask(rows, y, a.holdout, a.split, a.group_by, groups_by_path(a.groups, a.group_column, rows), a.seed)
    write_split_csv(a.out, rows, y, valid, force=a.force)
    counts = Counter(zip(y, valid))
    print(f"{int(valid.sum())} of {len(y)} labelled images in validation -> {a.out}")
    for c in sorted(set(y)):
        print(f"  {c}: {counts[(c, False)]} train, {counts[(c, True)]} valid")


def cmd_suspects(a):
    from .quality import suspects, write_suspects_csv
    from .store import FeatureStore

    store = FeatureStore.open(a.features_dir)
    found = suspects(store, a.head, a.C, a.folds, top=None)
    if a.csv:
        write_suspects_csv(a.csv, found, force=a.force)
    shown = found[:a.top] if a.top else found
    print(f"{len(found)} of {len(store.labelled()[1])} labelled images are predicted as another class by a "
          f"held-out {a.head}; the {len(shown)} most doubtful:")
    print(f"{'p(label)':>8} {'label':<16} {'predicted':<16} path")
    for r in shown:
        print(f"{r['p_label']:8.3f} {r['label']:<16} {r['predicted']:<16} {r['path']}")


def cmd_convert(a):
    from .headfile import convert

    clf, path = convert(a.model, a.out, trusted=a.trust_pickle)
    print(f"{a.model} ({clf.metrics.get('head')}, {len(clf.classes_)} classes) -> {path}")


def cmd_export(a):
    from .classifier import Classifier

    if os.path.exists(a.out) and os.path.samefile(a.out, a.model):
        raise UsageError(f"--out {a.out} is the head being exported; choose another path")
    clf = Classifier.load(a.model, trusted=getattr(a, "trust_pickle", False))
    path = clf.export(a.out, a.format, force=a.force)
    print(f"{a.model} ({len(clf.classes_)} classes, {describe(clf.spec)}) -> {a.format} {path}")


def cmd_verify(a):
    from .store import FeatureStore, verify

    problems = verify(a.features_dir)
    if problems:
        raise PipelineError("; ".join(problems))
    store = FeatureStore.open(a.features_dir)
    r = store.report
    print(f"OK: {a.features_dir} holds {len(store)} rows of D={store.spec['dim']} ({store.spec['backbone']}, "
          f"layer {store.spec['layer']}), {len(store.skipped)} files skipped by the last run")
    for c in r.get("label_conflicts", []):
        print(f"label_conflict: {', '.join(c['paths'])} are the same image labelled {' and '.join(c['labels'])}")
    if r.get("duplicates"):
        print(f"{len(r['duplicates'])} groups of identical images (see {store.root / 'report.json'})")


def cmd_backbones(a):
    from .backbones import list_backbones

    print(f"{'name':<36} {'kind':<9} {'size':>4}  {'scaling':<16} weights")
    for r in list_backbones():
        print(f"{r['name']:<36} {r['kind']:<9} {r['input_size']:>4}  {r['scaling']:<16} {r['weights']}")
    print("Also: any .tflite file, frozen .pb GraphDef, SavedModel folder, or hub:HANDLE.")


def cmd_export_features(a):
    from .exchange import export_features
    from .store import FeatureStore

    store = FeatureStore.open(a.features_dir)
    path = export_features(store, a.out, force=a.force)
    print(f"{len(store)} rows of D={store.spec['dim']} -> {path}")


def cmd_import_features(a):
    from .exchange import Columns, import_features

    store = import_features(a.file, a.out, Columns(a.id_column, a.features_column, a.label_column))
    print(f"{len(store)} rows of D={store.spec['dim']} ({describe(store.spec)}), {len(store.classes)} classes "
          f"-> {store.root}")


def cmd_serve(a):
    from dataclasses import fields

    from .predictors import load_predictor

    try:
        from .serve import ServeLimits, serve
    except ImportError as e:
        raise UsageError(f"serve needs FastAPI and uvicorn ({e}); pip install 'tf-feature-pipeline[serve]'") from e
    limits = ServeLimits(**{f.name: getattr(a, f.name) for f in fields(ServeLimits) if getattr(a, f.name) is not None})
    serve(load_predictor(a.model, trusted=a.trust_pickle), a.host, a.port, limits)


def cmd_demo(a):
    from .demo import run_demo

    r = run_demo(a.features, a.models, progress=not a.no_progress)
    print(f"leave-one-out accuracy on the 20 training cars: {r['loo_accuracy']:.2%} with calibrated probabilities, "
          f"{r['svm_loo_accuracy']:.2%} from the SVM's own decisions (linear SVM, C={r['C']:g})")
    print(f"features:    {r['features']}")
    print(f"model:       {r['model']}")
    print(f"report:      {r['report']}")
    print(f"html report: {r['report_html']}")
    print(f"predictions: {r['predictions']}")


COMMANDS = {"featurize": cmd_featurize, "train": cmd_train, "score": cmd_score, "evaluate": cmd_evaluate,
            "compare": cmd_compare, "split": cmd_split, "suspects": cmd_suspects, "predict-imagenet": cmd_predict_imagenet, "backbones": cmd_backbones, "verify": cmd_verify,
            "demo": cmd_demo, "export-features": cmd_export_features, "import-features": cmd_import_features,
            "convert": cmd_convert, "serve": cmd_serve, "export": cmd_export}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .logs import setup

    setup(args.verbose)  # -v also lets TensorFlow's and TFLite's own notices through
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        COMMANDS[args.command](args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # a one-line reason, the traceback with -v
        if args.verbose:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"error: {type(e).__name__}: {msg} (run with -v for details)", file=sys.stderr)
        return 1
    return 0
