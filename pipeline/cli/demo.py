"""The built-in demo: classic vs modern sports cars, offline, with the bundled MobileNetV2."""
from __future__ import annotations

import json
from pathlib import Path

from ..backbones import DATA_DIR, DEFAULT_BACKBONE
from ..engines import featurize
from ..reports.report import Predictions, report_predictions
from ..scoring.batch import score
from ..training.evaluation import cross_validated, format_metrics
from ..training.selection import cross_val_accuracy, learning_curve
from ..training.train import train

CARS = DATA_DIR / "cars"


def run_demo(features_dir="features", models_dir="models", progress: bool = True) -> dict:
    """Featurize the 20 training cars, train a linear SVM, cross-validate it leave-one-out,
    score the 7 unlabelled test cars. Returns where everything was written."""
    features_dir, models_dir = Path(features_dir), Path(models_dir)
    store = featurize(CARS / "train", DEFAULT_BACKBONE, "penultimate", out=features_dir / "demo-cars-train",
                      progress=progress)
    clf = train(store, head="linear_svm")
    model_path = clf.save(models_dir / "demo-cars.head.npz")
    loo, y, proba, rows = cross_validated(store, "linear_svm", clf.metrics["C"], folds="loo")
    X, _ = store.labelled()
    svm_loo = cross_val_accuracy("linear_svm", X, y, clf.metrics["C"], folds="loo")  # decisions, uncalibrated
    html = report_predictions(models_dir / "demo-cars-report", loo, Predictions.of_rows(y, proba, rows), store,
                              title="Classic vs modern sports cars: leave-one-out predictions",
                              curve=learning_curve("linear_svm", X, y, clf.metrics["C"], folds=5),
                              extra={"head": "linear_svm", "C": clf.metrics["C"], "protocol": "leave-one-out",
                                     "accuracy of the SVM's own decisions": f"{svm_loo:.4f}"})
    report = {"features": str(store.root), "model": str(model_path), "head": clf.metrics,
              "leave_one_out": loo}
    report_path = models_dir / "demo-cars-report.json"
    report_path.write_text(json.dumps(report, indent=1))
    text_path = models_dir / "demo-cars-report.txt"
    text_path.write_text("Leave-one-out on the 20 training cars (linear SVM on MobileNetV2 penultimate features)\n"
                         + format_metrics(loo) + "\n")
    predictions = models_dir / "demo-cars-predictions.csv"
    score(clf, CARS / "test", predictions, cache=features_dir / "demo-cars-test", progress=progress)
    return {"features": store.root, "model": model_path, "report": text_path, "report_json": report_path,
            "report_html": html,
            "predictions": predictions, "loo_accuracy": loo["accuracy"], "svm_loo_accuracy": svm_loo, "C": clf.metrics["C"],
            "cv_accuracy": clf.metrics.get("cv_accuracy")}
