"""Command line: parse arguments and forward to the library functions a Python user imports.

Exit status: 0 success; 2 bad usage (a bad flag or value, a path that does not exist or is the wrong kind:
pipeline/cli/paths.py, checked before any heavy import); 1 a failure while working; 130 interrupted.
Errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path

from ..backbones.base import describe
from ..engines import REGISTRY, engine_class
from ..errors import PipelineError, UsageError
from ..hints import did_you_mean
from ..options import HEADS, BackboneOptions, FeaturizeOptions, HeadOptions, ScoreOptions, SplitOptions
from .arguments import add_group, as_flags, from_args, positive_int
from .parser import Parser, option_strings
from .paths import check_paths

log = logging.getLogger("pipeline")


DATA_DIR_HELP = "folder of images: one sub-folder per class (or --labels CSV, or --unlabelled)"
STORE_HELP = "feature store folder (written by featurize)"
HEAD_HELP = "head file (.head.npz) written by train"
NO_PROGRESS_HELP = "no progress bar or progress lines on stderr"
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
    p = Parser(prog="python -m pipeline", description="tf-feature-pipeline: frozen ImageNet "
               "CNN features of image folders, cached with bcolz, classified by scikit-learn heads")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log more, show TensorFlow's and TFLite's own notices, and show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_featurize_parser, _train_parser, _score_parser, _evaluation_parsers, _file_parsers,
                _store_parsers, _serve_parser, _audit_parser):
        add(sub)
    d = sub.add_parser("demo", help="the whole flow offline on the bundled cars sample")
    d.add_argument("--features", default="features", help="folder for the feature stores (default: %(default)s)")
    d.add_argument("--models", default="models", help="folder for the head file (default: %(default)s)")
    d.add_argument("--no-progress", dest="progress", action="store_false", help=NO_PROGRESS_HELP)
    return p


def _featurize_parser(sub) -> None:
    f = sub.add_parser("featurize", help="images below DATA_DIR -> a feature store")
    f.add_argument("data_dir", help=DATA_DIR_HELP)
    add_group(f, BackboneOptions)
    f.add_argument("--out", help="feature store folder (default: features/<folder>-<backbone>-<layer>)")
    add_group(f, FeaturizeOptions, skip=("engine",))
    _engine_options(f)
    i = sub.add_parser("predict-imagenet", help="top-k ImageNet classes of images")
    i.add_argument("images", nargs="+", help="image files")
    add_group(i, BackboneOptions, skip=("layer", "batch_size", "tta"))
    i.add_argument("--top", type=positive_int("--top"), default=5, help="how many classes per image (default: %(default)s)")
    i.add_argument("--classes", help="only these classes, comma-separated ImageNet names (case, _ - and spaces "
                                     "alike, any synonym): the network's probabilities renormalised over them")


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="fit a head on a feature store")
    t.add_argument("features_dir", help=STORE_HELP)
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
    s.add_argument("model", help=HEAD_HELP)
    s.add_argument("data_dir", help="folder of images (all sub-folders), or a feature store whose rows are scored")
    s.add_argument("--out", required=True, help="CSV to write")
    add_group(s, ScoreOptions)
    add_group(s, FeaturizeOptions, only=("follow_links", "progress", "strict"),
              strict={"help": "fail (exit 1, no CSV) if any image could not be read"})
    s.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    _engine_options(s)


def _evaluation_parsers(sub) -> None:
    e = sub.add_parser("evaluate", help="metrics of a head on a labelled feature store")
    e.add_argument("model", help=HEAD_HELP)
    e.add_argument("features_dir", help="a labelled " + STORE_HELP)
    e.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--report", metavar="DIR", help="also write an HTML report (index.html + PNGs) to DIR")
    c = sub.add_parser("compare", help="cross-validated accuracy of heads on feature stores")
    c.add_argument("features_dirs", nargs="+", help="one or more " + STORE_HELP.replace("folder", "folders"))
    c.add_argument("--heads", default="linear_svm,logreg", help="head kinds, separated by commas (default: %(default)s)")
    add_group(c, HeadOptions, only=("C", "folds", "seed", "pca"), C={
        "type": "C_per_head", "help": "'auto' (CV, default), a number, or per head: linear_svm=0.01,logreg=0.1"})
    c.add_argument("--json", action="store_true", help="print one JSON list")
    add_group(c, FeaturizeOptions, only=("progress",),
              progress={"help": "no line on stderr as each head starts and ends"})
    sp = sub.add_parser("split", help="write the train/validation split of a store's labelled images to a CSV")
    sp.add_argument("features_dir", help=STORE_HELP)
    add_group(sp, SplitOptions, defaults={"holdout": 0.2}, holdout={"help": "validation fraction (default 0.2)"})
    sp.add_argument("--out", required=True, help="CSV to write: path,label,split")
    sp.add_argument("--force", action="store_true", help="replace --out even if it is not a CSV this tool wrote")
    q = sub.add_parser("suspects", help="images whose label the cross-validated head doubts most")
    q.add_argument("features_dir", help=STORE_HELP)
    add_group(q, HeadOptions, only=("head", "C", "folds"), defaults={"head": "logreg"})
    q.add_argument("--top", type=int, default=20, help="how many to list (0: all)")
    q.add_argument("--csv", help="also write the full ranked list to this CSV")
    q.add_argument("--force", action="store_true", help="replace --csv even if it is not a CSV this tool wrote")


def _file_parsers(sub) -> None:
    cv = sub.add_parser("convert", help="rewrite a head file (e.g. an old .joblib) as a .head.npz (no pickle)")
    cv.add_argument("model", help="head file to convert (.head.npz or an old .joblib)")
    cv.add_argument("--out", required=True, help="head file to write (NAME.head.npz)")
    cv.add_argument("--trust-pickle", action="store_true",
                    help="required to read an old .joblib head: it is a pickle and can run code; only for files you trust")
    cv.add_argument("--force", action="store_true", help="replace --out even if it is not a head this tool wrote")
    ex = sub.add_parser("export", help="a head with its backbone -> one SavedModel or TFLite model (image -> probabilities)")
    ex.add_argument("model", help="head file (.head.npz)")
    ex.add_argument("--format", required=True, choices=["saved_model", "tflite"],
                    help="saved_model (a folder) or tflite (one file)")
    ex.add_argument("--out", required=True, help="SavedModel folder or .tflite file to write")
    ex.add_argument("--force", action="store_true", help="replace an existing --out")
    x = sub.add_parser("export-features", help="a feature store -> a .parquet or .npz file other tools read")
    x.add_argument("features_dir", help=STORE_HELP)
    x.add_argument("--out", required=True, help="file to write; the format comes from the extension")
    x.add_argument("--force", action="store_true", help="replace an existing file")
    m = sub.add_parser("import-features", help="a .parquet or .npz file of features -> a feature store")
    m.add_argument("file", help="a .parquet or .npz file of features")
    m.add_argument("--out", required=True, help="feature store folder to create")
    m.add_argument("--id-column", default="id", help="column of unique ids (default: %(default)s)")
    m.add_argument("--features-column", default="features", help="column of vectors (default: %(default)s)")
    m.add_argument("--label-column", help="column of labels (default: 'label' when the file has one)")
    m.add_argument("--max-dim", type=int, default=65536, metavar="D",
                   help="refuse vectors of more than D values (default: %(default)s): a file is checked before it is read")


def _store_parsers(sub) -> None:
    v = sub.add_parser("verify", help="check a feature store's integrity")
    v.add_argument("features_dir", help=STORE_HELP)
    sub.add_parser("backbones", help="list the registered backbones")


def _serve_parser(sub) -> None:
    sv = sub.add_parser("serve", help="serve a head over HTTP: POST /predict, GET /health, GET /model, /docs")
    sv.add_argument("model", help="a .head.npz head, or a SavedModel folder or .tflite file written by `export`")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: %(default)s, this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    sv.add_argument("--trust-pickle", action="store_true", help="allow loading an old pickle-based (joblib) head file")
    sv.add_argument("--reject-ood", action="store_true",
                    help="answer 'unknown' for images the head flags out-of-distribution (its ood field)")
    sv.add_argument("--trust-model", action="store_true",
                    help="serve an exported SavedModel or .tflite even with ops outside the allow-list of pure "
                         "tensor ops (SavedModel) or custom/Flex operators (TFLite): such ops can read and write "
                         "files or run code; only for models you trust")
    for flag, kind, what in [("--max-body-bytes", int, "request body size (413 beyond)"),
                             ("--max-pixels", int, "pixels per image, checked before decoding (422 beyond)"),
                             ("--max-images", int, "images per request (413 beyond)"),
                             ("--timeout-s", float, "seconds per request (504 beyond)"),
                             ("--max-in-flight", int, "requests in progress at once (503 with Retry-After beyond)"),
                             ("--batch-wait-ms", float, "how long to gather concurrent requests into one batch"),
                             ("--batch-size", int, "images per network call (default: the backbone's)"),
                             ("--max-pixels-in-flight", int, "decoded pixels of all requests at once (wait, then "
                              "503 with Retry-After; default 48 M)"),
                             ("--max-body-bytes-in-flight", int, "request-body bytes held by all requests at once "
                              "(wait, then 503 with Retry-After; default 128 MiB)"),
                             ("--queue-wait-s", float, "how long a request waits for those budgets (default 5)"),
                             ("--max-connections", int, "open connections (beyond: 503 and closed; default 256)"),
                             ("--header-timeout-s", float, "seconds a connection has to send complete request "
                              "headers, else it is closed (default 10)"),
                             ("--keep-alive-s", float, "idle keep-alive connections are closed after this "
                              "(default 5)")]:
        sv.add_argument(flag, type=kind, help=what)
    sv.add_argument("--verbose-model", action="store_true",
                    help="GET /model lists the exact versions of Python and every library "
                         "(default: this package's only)")


def _audit_parser(sub) -> None:
    from ..audit.checks import Search

    au = sub.add_parser("audit", help="near-duplicates, label issues and outliers of a store; with a second "
                        "store (test, or a new batch), its leaks from the first and the accuracy with and without them")
    au.add_argument("features_dir", help="feature store (the training set)")
    au.add_argument("features_dir2", nargs="?", help="second feature store, checked against the first")
    add_group(au, Search)
    au.add_argument("--checks", default="near_duplicate,leak,label_issue,outlier",
                    help="kinds of finding to look for, separated by commas (default: %(default)s)")
    add_group(au, HeadOptions, only=("head", "C", "folds"), defaults={"head": "logreg"})
    au.add_argument("--top", type=int, default=20, help="findings of each kind printed (0: all)")
    au.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    au.add_argument("--csv", metavar="FILE", help="also write every finding to this CSV")
    au.add_argument("--force", action="store_true", help="replace --csv even if it is not a CSV this tool wrote")
    au.add_argument("--report", metavar="DIR", help="also write an HTML report with thumbnails to DIR")


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
    print(run.summary(flags=option_strings(a.command_parser), renames={"--out": "--cache"}))  # score's store
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
    o, heads = from_args(HeadOptions, a), [h.strip() for h in a.heads.split(",")]
    for h in heads:  # before scikit-learn is imported
        if h not in HEADS:
            raise UsageError(f"unknown head {h!r} in --heads{did_you_mean(h, HEADS)}; choose from {', '.join(HEADS)}")
    from ..heads.evaluation import compare
    from ..reports.summary import compare_table

    rows = compare(a.features_dirs, heads, o.C, o.folds, o.seed, o.pca, progress=a.progress)
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


def cmd_audit(a):
    from ..audit import audit, write_csv
    from ..audit.checks import Search, open_store
    from ..outputs import check_output, check_report_dir
    from ..reports.audit import audit_table, write_audit_report

    from ..store.reader import not_a_store

    for d in (a.features_dir, a.features_dir2):
        if d and not os.path.isfile(os.path.join(d, "meta.json")):  # a path that is no store: a usage error
            raise UsageError(not_a_store(Path(d)))
    stores = [open_store(d) for d in (a.features_dir, a.features_dir2) if d]
    if a.csv:  # before the work, not after
        check_output(a.csv, "csv", force=a.force)
    for s in stores if a.report else ():
        check_report_dir(a.report, s.meta.get("data_dir"))
    result = audit(*stores, search=from_args(Search, a), head=from_args(HeadOptions, a),
                   checks=tuple(c.strip() for c in a.checks.split(",") if c.strip()))
    if a.csv:
        write_csv(a.csv, result.findings, force=a.force)
    print(json.dumps(result.to_dict()) if a.json else audit_table(result, a.top))
    if a.report:
        page = write_audit_report(a.report, result, {str(s.root): s.meta.get("data_dir") for s in stores})
        print(f"report -> {page}", file=sys.stderr if a.json else sys.stdout)


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

    store = import_features(a.file, a.out, Columns(a.id_column, a.features_column, a.label_column),
                            max_dim=a.max_dim)
    print(f"{len(store)} rows of D={store.spec['dim']} ({describe(store.spec)}), {len(store.classes)} classes "
          f"-> {store.root}")


def cmd_serve(a):
    from dataclasses import fields

    from ..serving.predictors import load_predictor

    try:
        from ..serving.serve import ServeLimits, bind, serve
    except ImportError as e:
        raise UsageError(f"serve needs FastAPI and uvicorn ({e}); pip install 'tf-feature-pipeline[serve]'") from e
    limits = ServeLimits(**{f.name: getattr(a, f.name) for f in fields(ServeLimits) if getattr(a, f.name) is not None})
    sock = bind(a.host, a.port)  # a busy port fails now, before the model loads or anything is announced
    serve(load_predictor(a.model, trusted=a.trust_pickle, reject_ood=a.reject_ood, trust_model=a.trust_model),
          a.host, a.port, limits, a.verbose_model, sock=sock)


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
            "convert": cmd_convert, "serve": cmd_serve, "export": cmd_export, "audit": cmd_audit}


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
        args.command_parser = _command_parsers(parser, args.command)[0]
        check_paths(args.command, args)  # missing or wrong-kind paths: refused before any heavy import
        COMMANDS[args.command](args)
    except PipelineError as e:  # the library names parameters (batch_size=0): say the flags instead
        if args.verbose:  # -v: where it was raised, then the same one-line reason, then any details
            traceback.print_exc()
        print(f"error: {as_flags(str(e), *_command_parsers(parser, args.command))}", file=sys.stderr)
        if args.verbose and getattr(e, "details", None):
            print(e.details, file=sys.stderr)
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
