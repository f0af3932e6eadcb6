"""Command line: parse arguments and forward to the library functions a Python user imports.

Exit status: 0 success; 2 bad usage (a bad flag or value, a path that does not exist or is the wrong kind:
pipeline/cli/paths.py, checked before any heavy import); 1 a failure while working; 130 interrupted.
Errors are one line on stderr.
"""
from __future__ import annotations

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
from ..options import (
    HEADS,
    BackboneOptions,
    FeaturizeOptions,
    HeadOptions,
    ScoreOptions,
    SplitOptions,
)
from .arguments import as_flags, from_args
from .parser import option_strings
from .paths import check_paths
from .subparsers import _command_parsers, build_parser  # noqa: F401 (build_parser: also imported from here)

log = logging.getLogger("pipeline")


def _cluster(a):
    """The cluster of --engine from its own flags (None for local runs); another engine's flags are refused."""
    for name in REGISTRY:
        flags = engine_class(name).flags
        if name != a.engine and any(getattr(a, f, None) for f in flags):
            raise UsageError(f"{' and '.join('--' + f.replace('_', '-') for f in flags)} apply to --engine {name}")
    return engine_class(a.engine).cluster_from_args(a)


def cmd_featurize(a):
    from ..engines import featurize

    options = from_args(FeaturizeOptions, a, cluster=_cluster(a))
    print(featurize(a.data_dir, from_args(BackboneOptions, a), out=a.out, options=options, report=True).summary())


def cmd_train(a):
    from ..outputs import check_output, check_report_dir
    from ..reports.summary import train_report, train_summary
    from ..store import FeatureStore
    from ..training.train import train

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
    from ..store import FeatureStore
    from ..training.evaluation import format_metrics, predictions

    model, store = load(a.model, trusted=a.trust_pickle), FeatureStore.open(a.features_dir)
    m, y, proba, rows = predictions(model, store)
    print(json.dumps(m) if a.json else format_metrics(m))
    if a.report:
        from ..reports.report import Predictions, report_predictions

        page = report_predictions(a.report, m, Predictions.of_rows(y, proba, rows), store,
                                  title=f"{os.path.basename(a.model)} on {store.root.name}",
                                  extra={"model": a.model, "features": f"{store.root} ({describe(store.spec)})"},
                                  selection=model.metrics.get("selection"))
        print(f"report -> {page}", file=sys.stderr if a.json else sys.stdout)


def cmd_compare(a):
    o, heads = from_args(HeadOptions, a), [h.strip() for h in a.heads.split(",")]
    for h in heads:  # before scikit-learn is imported
        if h == "auto":
            raise UsageError(f"--heads auto: compare cross-validates each head kind you list, side by side; 'auto' "
                             f"is train's choice among them, so list the kinds instead, e.g. --heads {','.join(HEADS)} "
                             f"(train and suspects take --head auto)")
        if h not in HEADS:
            raise UsageError(f"unknown head {h!r} in --heads{did_you_mean(h, HEADS)}; choose from {', '.join(HEADS)}")
    from ..reports.summary import compare_table
    from ..training.evaluation import compare

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
    from ..reports.summary import suspects_table
    from ..store import FeatureStore
    from ..training.quality import pick_head, suspects, write_suspects_csv

    store = FeatureStore.open(a.features_dir)
    head, C = pick_head(store, a.head, a.C, a.folds)  # --head auto: the kind and C train would choose
    found = suspects(store, head, C, a.folds, top=None)
    if a.csv:
        write_suspects_csv(a.csv, found, force=a.force)
    shown = head if a.head != "auto" else f"{head} (C={C:g}, chosen by --head auto as train would)"
    print(suspects_table(found, len(store.labelled()[1]), shown, a.top))


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
    try:
        predictor = load_predictor(a.model, trusted=a.trust_pickle, reject_ood=a.reject_ood,
                                   trust_model=a.trust_model)
    except BaseException:
        sock.close()  # a model refused or unreadable: the port is free again at once
        raise
    serve(predictor, a.host, a.port, limits, a.verbose_model, sock=sock)


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


def console_main() -> int:
    """``python -m pipeline`` and the ``tf-feature-pipeline`` command: :func:`main`, then ready to exit.

    ``gc.freeze()`` spares the exit a last garbage collection over every object of the imported libraries
    and the run (~40 ms of CPU of each cold run, BENCHMARKS.md): the process ends, the OS frees its memory.
    Files are closed by the run itself and atexit handlers still run; only after a run that succeeded and
    only for a process about to exit, never inside :func:`main`, which other programs call."""
    import gc

    rc = main()
    if rc == 0:  # after an error, what its traceback held (a decode pool's shared memory) is still collected
        gc.freeze()
    return rc


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
