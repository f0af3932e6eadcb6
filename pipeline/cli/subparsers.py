"""The command line's sub-parsers: one per command, flags declared from the settings dataclasses of
:mod:`pipeline.options` (:mod:`pipeline.cli.arguments`) and each engine's own; no library code runs here."""
from __future__ import annotations

import argparse

from ..engines import REGISTRY, engine_class
from ..options import (
    BackboneOptions,
    FeaturizeOptions,
    HeadOptions,
    ScoreOptions,
    SplitOptions,
)
from .arguments import add_group, positive_int
from .parser import Parser

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


def _command_parsers(parser: argparse.ArgumentParser, command: str) -> list[argparse.ArgumentParser]:
    """The parser of `command`, then those of the others (whose flags an error may suggest)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [sub.choices[command]] + [p for name, p in sub.choices.items() if name != command]
