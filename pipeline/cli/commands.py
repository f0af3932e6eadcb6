"""Command line: parse arguments and forward to the library functions a Python user imports.

Exit status: 0 success, 2 bad usage, 1 failure; errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from dataclasses import replace

from ..backbones.base import describe
from ..engines import REGISTRY, engine_class
from ..errors import PipelineError, UsageError
from ..options import BackboneOptions, FeaturizeOptions, HeadOptions, ScoreOptions, SplitOptions
from .arguments import add_group, as_flags, from_args, positive_int

log = logging.getLogger("pipeline")


TRUST_HELP = ("also load an old .joblib head (format head-1): it is a pickle and can run any code in it; "
              "only for files you trust (convert it once with `convert`)")


def _engine_options(p: argparse.ArgumentParser) -> None:
    """--engine, and each registered engine's own flags (declared by the engine class)."""
    add_group(p, FeaturizeOptions, only=("engine",))
    for name in REGISTRY:
        engine_class(name).add_arguments(p)


def _cluster(a):
    """The cluster of --engine from its own flags (None for local runs); another engine's flags are refused."""
    for name in REGISTRY:
        flags = engine_class(name).flags
        if name != a.engine and any(getattr(a, f, None) for f in flags):
            raise UsageError(f"{' and '.join('--' + f.replace('_', '-') for f in flags)} apply to --engine {name}")
    return engine_class(a.engine).cluster_from_args(a)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description="tf-feature-pipeline: frozen ImageNet "
                                "CNN features of image folders, cached with bcolz, classified by scikit-learn heads")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log more, show TensorFlow's and TFLite's own notices, and show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_featurize_parser, _train_parser, _score_parser, _evaluation_parsers, _file_parsers,
                _store_parsers, _serve_parser):
        add(sub)
    d = sub.add_parser("demo", help="the whole flow offline on the bundled cars sample")
    d.add_argument("--features", default="features")
    d.add_argument("--models", default="models")
    d.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _featurize_parser(sub) -> None:
    f = sub.add_parser("featurize", help="images below DATA_DIR -> a feature store")
    f.add_argument("data_dir")
    add_group(f, BackboneOptions)
    f.add_argument("--out", help="feature store folder (default: features/<folder>-<backbone>-<layer>)")
    add_group(f, FeaturizeOptions, skip=("engine",))
    _engine_options(f)
    i = sub.add_parser("predict-imagenet", help="top-k ImageNet classes of images")
    i.add_argument("images", nargs="+")
    add_group(i, BackboneOptions, skip=("layer", "batch_size", "tta"))
    i.add_argument("--top", type=positive_int("--top"), default=5)
    i.add_argument("--classes", help="only these classes, comma-separated ImageNet names (case, _ - and spaces "
                                     "alike, any synonym): the network's probabilities renormalised over them")


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="fit a head on a feature store")
    t.add_argument("features_dir")
    add_group(t, HeadOptions, skip=("pca", "class_weight"))
    t.add_argument("--out", required=True, help="head file to write (NAME.head.npz: arrays and JSON, no pickle)")
    t.add_argument("--force", action="store_true", help="replace --out even if it is not a head this tool wrote")
    add_group(t, SplitOptions, skip=("seed",))
    add_group(t, FeaturizeOptions, only=("sample",),
              sample={"help": "train on N images per class (or a fraction, e.g. 0.1)"})
    add_group(t, HeadOptions, only=("pca", "class_weight"))
    t.add_argument("--report", metavar="DIR", help="write an HTML report of the cross-validated predictions")
    t.add_argument("--learning-curve", action="store_true",
                   help="accuracy against training images per class (printed, and plotted in --report)")
    t.add_argument("--json", action="store_true", help="print the head's metrics (with the selection table) as JSON")
    t.add_argument("--layer", help="train on this feature set only (default: choose by CV among those the store "
                                   "offers: its layer, layers written beside it, penultimate+predictions)")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar or lines")


def _score_parser(sub) -> None:
    s = sub.add_parser("score", help="predict every image below DATA_DIR, or every row of a feature store, into a CSV")
    s.add_argument("model")
    s.add_argument("data_dir")
    s.add_argument("--out", required=True, help="CSV to write")
    add_group(s, ScoreOptions)
    add_group(s, FeaturizeOptions, only=("follow_links", "progress"))
    s.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    _engine_options(s)


def _evaluation_parsers(sub) -> None:
    e = sub.add_parser("evaluate", help="metrics of a head on a labelled feature store")
    e.add_argument("model")
    e.add_argument("features_dir")
    e.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--report", metavar="DIR", help="also write an HTML report (index.html + PNGs) to DIR")
    c = sub.add_parser("compare", help="cross-validated accuracy of heads on feature stores")
    c.add_argument("features_dirs", nargs="+")
    c.add_argument("--heads", default="linear_svm,logreg")
    add_group(c, HeadOptions, only=("C", "folds", "seed", "pca"), C={
        "type": "C_per_head", "help": "'auto' (CV, default), a number, or per head: linear_svm=0.01,logreg=0.1"})
    c.add_argument("--json", action="store_true")
    add_group(c, FeaturizeOptions, only=("progress",),
              progress={"help": "no line on stderr as each head starts and ends"})
    sp = sub.add_parser("split", help="write the train/validation split of a store's labelled images to a CSV")
    sp.add_argument("features_dir")
    add_group(sp, SplitOptions, defaults={"holdout": 0.2}, holdout={"help": "validation fraction (default 0.2)"})
    sp.add_argument("--out", required=True, help="CSV to write: path,label,split")
    sp.add_argument("--force", action="store_true", help="replace --out even if it is not a CSV this tool wrote")
    q = sub.add_parser("suspects", help="images whose label the cross-validated head doubts most")
    q.add_argument("features_dir")
    add_group(q, HeadOptions, only=("head", "C", "folds"), defaults={"head": "logreg"})
    q.add_argument("--top", type=int, default=20, help="how many to list (0: all)")
    q.add_argument("--csv", help="also write the full ranked list to this CSV")
    q.add_argument("--force", action="store_true", help="replace --csv even if it is not a CSV this tool wrote")


def _file_parsers(sub) -> None:
    cv = sub.add_parser("convert", help="rewrite a head file (e.g. an old .joblib) as a .head.npz (no pickle)")
    cv.add_argument("model")
    cv.add_argument("--out", required=True, help="head file to write (NAME.head.npz)")
    cv.add_argument("--trust-pickle", action="store_true",
                    help="required to read an old .joblib head: it is a pickle and can run code; only for files you trust")
    cv.add_argument("--force", action="store_true", help="replace --out even if it is not a head this tool wrote")
    ex = sub.add_parser("export", help="a head with its backbone -> one SavedModel or TFLite model (image -> probabilities)")
    ex.add_argument("model", help="head file (.head.npz)")
    ex.add_argument("--format", required=True, choices=["saved_model", "tflite"])
    ex.add_argument("--out", required=True, help="SavedModel folder or .tflite file to write")
    ex.add_argument("--force", action="store_true", help="replace an existing --out")
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


def _store_parsers(sub) -> None:
    v = sub.add_parser("verify", help="check a feature store's integrity")
    v.add_argument("features_dir")
    sub.add_parser("backbones", help="list the registered backbones")


def _serve_parser(sub) -> None:
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


def cmd_featurize(a):
    from ..engines import featurize

    options = from_args(FeaturizeOptions, a, cluster=_cluster(a))
    print(featurize(a.data_dir, from_args(BackboneOptions, a), out=a.out, options=options, report=True).summary())


def cmd_train(a):
    from ..heads.training import train
    from ..outputs import check_output, check_report_dir
    from ..reports.summary import train_report, train_summary
    from ..store import FeatureStore

    check_output(a.out, "head", force=a.force)
    store, head = FeatureStore.open(a.features_dir), from_args(HeadOptions, a)
    if a.report:  # before training, not after
        check_report_dir(a.report, store.meta.get("data_dir"))
    if a.learning_curve and store.multi_label:
        raise UsageError("--learning-curve is for single-label stores; this one is multi-label")
    clf = train(store, head, from_args(SplitOptions, a), sample=a.sample, progress=a.progress, layer=a.layer)
    path = clf.save(a.out)
    print(json.dumps({"head_file": str(path), **clf.metrics}) if a.json else train_summary(clf, path))
    if a.report or a.learning_curve:
        chosen = replace(head, head=clf.metrics["head"])
        print(train_report(store, clf.metrics["C"], chosen, a.report, a.learning_curve, clf.metrics.get("selection"),
                           clf.metrics.get("feature_set")), file=sys.stderr if a.json else sys.stdout)


def cmd_score(a):
    from ..scoring.batch import score

    run = score(a.model, a.data_dir, a.out, from_args(ScoreOptions, a), trusted=a.trust_pickle,
                featurize_options=from_args(FeaturizeOptions, a, cluster=_cluster(a)))
    print(run.summary())
    print(f"predictions -> {a.out}")


def cmd_evaluate(a):
    from ..heads.classifier import load
    from ..heads.evaluation import format_metrics, predictions
    from ..store import FeatureStore

    model, store = load(a.model, trusted=a.trust_pickle), FeatureStore.open(a.features_dir)
    m, y, proba, rows = predictions(model, store)
    print(json.dumps(m) if a.json else format_metrics(m))
    if a.report:
        from ..reports.report import report_predictions

        page = report_predictions(a.report, m, y, proba, rows, store,
                                  title=f"{os.path.basename(a.model)} on {store.root.name}",
                                  extra={"model": a.model, "features": f"{store.root} ({describe(store.spec)})"},
                                  selection=model.metrics.get("selection"))
        print(f"report -> {page}", file=sys.stderr if a.json else sys.stdout)


def cmd_compare(a):
    from ..heads.evaluation import compare
    from ..reports.summary import compare_table

    o = from_args(HeadOptions, a)
    rows = compare(a.features_dirs, a.heads.split(","), o.C, o.folds, o.seed, o.pca, progress=a.progress)
    print(json.dumps(rows) if a.json else compare_table(rows, o.folds, o.seed, o.pca))


def cmd_predict_imagenet(a):
    from ..scoring.imagenet import predict_imagenet

    classes = [c.strip() for c in a.classes.split(",") if c.strip()] if a.classes else None
    for path, top in predict_imagenet(a.images, from_args(BackboneOptions, a), a.top, classes=classes):
        print(f"{path}: " + ", ".join(f"{label.split(',')[0]} ({p:.3f})" for label, p in top))


def cmd_split(a):
    from ..dataset.splits import split_store, write_split_csv
    from ..reports.summary import split_summary
    from ..store import FeatureStore

    rows, y, valid = split_store(FeatureStore.open(a.features_dir), from_args(SplitOptions, a))
    write_split_csv(a.out, rows, y, valid, force=a.force)
    print(split_summary(y, valid, a.out))


def cmd_suspects(a):
    from ..heads.quality import suspects, write_suspects_csv
    from ..reports.summary import suspects_table
    from ..store import FeatureStore

    store = FeatureStore.open(a.features_dir)
    found = suspects(store, a.head, a.C, a.folds, top=None)
    if a.csv:
        write_suspects_csv(a.csv, found, force=a.force)
    print(suspects_table(found, len(store.labelled()[1]), a.head, a.top))


def cmd_convert(a):
    from ..heads.classifier import convert
    from ..outputs import check_output

    check_output(a.out, "head", inputs=(a.model,), force=a.force)
    clf, path = convert(a.model, a.out, trusted=a.trust_pickle)
    print(f"{a.model} ({clf.metrics.get('head')}, {len(clf.classes_)} classes) -> {path}")


def cmd_export(a):
    from ..heads.classifier import Classifier

    if os.path.exists(a.out) and os.path.samefile(a.out, a.model):
        raise UsageError(f"--out {a.out} is the head being exported; choose another path")
    clf = Classifier.load(a.model, trusted=getattr(a, "trust_pickle", False))
    path = clf.export(a.out, a.format, force=a.force)
    print(f"{a.model} ({len(clf.classes_)} classes, {describe(clf.spec)}) -> {a.format} {path}")


def cmd_verify(a):
    from ..store import FeatureStore, verify

    problems = verify(a.features_dir)
    if problems:
        raise PipelineError("; ".join(problems))
    store = FeatureStore.open(a.features_dir)
    r = store.report
    print(f"OK: {a.features_dir} holds {len(store)} rows of {store.feature_spec.describe()}, "
          f"{len(store.skipped)} files skipped by the last run")
    for c in r.get("label_conflicts", []):
        print(f"label_conflict: {', '.join(c['paths'])} are the same image labelled {' and '.join(c['labels'])}")
    if r.get("duplicates"):
        print(f"{len(r['duplicates'])} groups of identical images (see {store.root / 'report.json'})")


def cmd_backbones(a):
    from ..backbones import list_backbones

    print(f"{'name':<36} {'kind':<9} {'size':>4}  {'scaling':<16} weights")
    for r in list_backbones():
        print(f"{r['name']:<36} {r['kind']:<9} {r['input_size']:>4}  {r['scaling']:<16} {r['weights']}")
    print("Also: any .tflite file, frozen .pb GraphDef, SavedModel folder, or hub:HANDLE.")


def cmd_export_features(a):
    from ..store import FeatureStore
    from ..store.exchange import export_features

    store = FeatureStore.open(a.features_dir)
    path = export_features(store, a.out, force=a.force)
    print(f"{len(store)} rows of D={store.spec['dim']} -> {path}")


def cmd_import_features(a):
    from ..store.exchange import Columns, import_features

    store = import_features(a.file, a.out, Columns(a.id_column, a.features_column, a.label_column))
    print(f"{len(store)} rows of D={store.spec['dim']} ({describe(store.spec)}), {len(store.classes)} classes "
          f"-> {store.root}")


def cmd_serve(a):
    from dataclasses import fields

    from ..serving.predictors import load_predictor

    try:
        from ..serving.serve import ServeLimits, serve
    except ImportError as e:
        raise UsageError(f"serve needs FastAPI and uvicorn ({e}); pip install 'tf-feature-pipeline[serve]'") from e
    limits = ServeLimits(**{f.name: getattr(a, f.name) for f in fields(ServeLimits) if getattr(a, f.name) is not None})
    serve(load_predictor(a.model, trusted=a.trust_pickle), a.host, a.port, limits)


def cmd_demo(a):
    from .demo import run_demo

    r = run_demo(a.features, a.models, progress=a.progress)
    print(f"leave-one-out accuracy on the 20 training cars: {r['loo_accuracy']:.2%} with calibrated probabilities, "
          f"{r['svm_loo_accuracy']:.2%} from the SVM's own decisions (linear SVM, C={r['C']:g})")
    print(f"features:    {r['features']}")
    print(f"model:       {r['model']}")
    print(f"report:      {r['report']}")
    print(f"json report: {r['report_json']}")
    print(f"html report: {r['report_html']}")
    print(f"predictions: {r['predictions']}")


COMMANDS = {"featurize": cmd_featurize, "train": cmd_train, "score": cmd_score, "evaluate": cmd_evaluate,
            "compare": cmd_compare, "split": cmd_split, "suspects": cmd_suspects, "predict-imagenet": cmd_predict_imagenet, "backbones": cmd_backbones, "verify": cmd_verify,
            "demo": cmd_demo, "export-features": cmd_export_features, "import-features": cmd_import_features,
            "convert": cmd_convert, "serve": cmd_serve, "export": cmd_export}


def _command_parsers(parser: argparse.ArgumentParser, command: str) -> list[argparse.ArgumentParser]:
    """The parser of `command`, then those of the others (whose flags an error may suggest)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [sub.choices[command]] + [p for name, p in sub.choices.items() if name != command]


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..logs import setup

    setup(args.verbose)  # -v also lets TensorFlow's and TFLite's own notices through
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        COMMANDS[args.command](args)
    except PipelineError as e:  # the library names parameters (batch_size=0): say the flags instead
        if args.verbose:  # -v: where it was raised, then the same one-line reason
            traceback.print_exc()
        print(f"error: {as_flags(str(e), *_command_parsers(parser, args.command))}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
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
