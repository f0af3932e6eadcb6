"""The head as a scikit-learn estimator: ``FeatureHead(head="linear_svm", C="auto").fit(X, y)``.

``FeatureHead`` keeps scikit-learn's contract: ``__init__`` stores its parameters and nothing else,
``fit`` checks them (errors name the parameter and the value: ``C=-1.0``), fits and returns
``self``; what it learnt ends in ``_`` (``classes_``, ``n_features_in_``, ``C_``, ``model_``,
``metrics_``). So ``clone``, ``get_params``/``set_params``, ``cross_val_score``, ``GridSearchCV``
and ``Pipeline`` work with it. ``model_`` is the fitted StandardScaler (+ PCA) + classifier of
pipeline/training/selection.py, the SVMs temperature-calibrated (pipeline/heads/calibration.py).

``C="auto"``: the head's grid (``HeadKind.c_grid``, pipeline/heads/kinds.py) cross-validated by
pipeline/training/search.py (warm starts along C, folds in parallel: ``n_jobs``), accuracy on the folds of
``selection_splitter`` (RareClassKFold: one-image classes train in every fold and are never
validated; or leave-one-out); of the C values whose mean accuracy equals the best, the middle one in
grid order (the rule ``select_C`` has always used). The SVMs' temperature is fitted on the same
out-of-fold decision values when ``calibration_folds == folds`` (nothing refitted for calibration).

:class:`pipeline.heads.classifier.Classifier` wraps a fitted FeatureHead with the feature-spec check and
persistence (the ``.head.npz`` file); multi-label heads (pipeline/training/multilabel.py) are not FeatureHeads.
``fit_head(head, X, y, ...)`` is the same fit as a function: (fitted pipeline, metrics).
"""
from __future__ import annotations

import logging
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import UsageError
from ..heads.folds import too_small
from ..heads.kinds import KINDS, check_head
from .cpath import CVSettings, one_thread
from .search import Candidate, choose
from .selection import calibration_note, check_labels, make_head

log = logging.getLogger(__name__)


def _has_proba(est) -> bool:
    """Whether ``predict_proba`` exists: heads with their own probabilities, or calibrated ones (an unknown head
    name is refused by ``fit``, not here)."""
    kind = KINDS.get(est.head)
    return kind is None or not kind.needs_calibration or bool(est.calibration_folds)


class FeatureHead(ClassifierMixin, BaseEstimator):
    """A classifier on feature vectors: StandardScaler (+ PCA) + LinearSVC / SVC / LogisticRegression.

    head: 'linear_svm', 'svm' (RBF) or 'logreg'. C: a number above 0, or 'auto' (chosen by
    cross-validated accuracy, see the module docstring). folds: the folds of that search (a number
    of at least 2, or 'loo'). seed: shuffles those folds and the calibration's. pca: reduce the
    standardised features to this many components first (None: no PCA). class_weight: None or
    'balanced'. calibration_folds: the folds whose decision values fit the SVMs' temperature
    (0: no calibration; the SVM heads then have no ``predict_proba``).
    """

    def __init__(self, head: str = "linear_svm", C: float | str = "auto", folds: int | str = 5, seed: int = 0,
                 pca: int | None = None, class_weight: str | None = None, calibration_folds: int = 5,
                 n_jobs: int | None = None):
        self.head = head
        self.C = C
        self.folds = folds
        self.seed = seed
        self.pca = pca
        self.class_weight = class_weight
        self.calibration_folds = calibration_folds
        self.n_jobs = n_jobs

    # ---- fitting ---------------------------------------------------------------------------------
    def fit(self, X, y):
        """Check the parameters and the labels, choose C if 'auto', fit on every row; return self."""
        return self.fit_chosen(X, y, None)

    def fit_chosen(self, X, y, choice=None):
        """``fit``, with C='auto' taken from `choice` (a pipeline.training.search.Choice made on these rows and
        these folds for this head) instead of searching again; return self."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        counts = check_labels(y)
        if self.pca and self.pca >= min(X.shape):
            raise UsageError(f"pca={self.pca} must be below the number of images ({len(X)}) and of "
                             f"features ({X.shape[1]})")
        with warnings.catch_warnings():  # many classes of few images is normal here, not "a regression problem"
            warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
            search = (choice or self._search_C(X, y)) if self.C == "auto" else None
            self.C_ = float(self.C) if search is None else float(search.C)
            self.model_ = self._fit_model(X, y, search)
        self.classes_ = self.model_.classes_
        self.metrics_ = self._metrics(X, y, counts, search)
        return self

    def _check_params(self) -> None:
        check_head(self.head, self.class_weight)
        C = self.C
        if not (C == "auto" if isinstance(C, str) else
                isinstance(C, numbers.Real) and not isinstance(C, bool) and np.isfinite(C) and C > 0):
            raise UsageError(f"C must be 'auto' or a number above 0, got C={C!r}")
        if self.folds != "loo" and not (_whole(self.folds) and self.folds >= 2):
            raise UsageError(f"folds must be 'loo' or a whole number of at least 2, got folds={self.folds!r}")
        if self.pca is not None and not (_whole(self.pca) and self.pca >= 0):
            raise UsageError(f"pca must be None or a whole number of components, got pca={self.pca!r}")
        cal = self.calibration_folds
        if not (_whole(cal) and (cal == 0 or cal >= 2)):
            raise UsageError(f"calibration_folds must be 0 (no calibration) or a whole number of at least 2, "
                             f"got calibration_folds={cal!r}")

    def _search_C(self, X, y):
        """The head's C grid cross-validated on the selection folds (pipeline/training/search.py: warm starts along
        C, folds in parallel); the C the plateau rule picks, with its out-of-fold decision values."""
        choice = choose({"features": X}, y, [Candidate("features", self.head)], CVSettings.of(self, self.n_jobs))
        log.info("%s: C=%g chosen by %d-fold CV (accuracy %.4f)", self.head, choice.C, choice.n_splits,
                 choice.cv_accuracy)
        return choice

    def _fit_model(self, X, y, search):
        calibrate = bool(self.calibration_folds) and KINDS[self.head].needs_calibration
        model = make_head(self.head, self.C_, calibrate=calibrate, calibration_folds=self.calibration_folds,
                          pca=self.pca, seed=self.seed, class_weight=self.class_weight)
        with one_thread():  # see pipeline/training/cpath.py
            if calibrate and search is not None and self.folds == self.calibration_folds:
                # the selection folds are the calibration folds (RareClassKFold, same k and seed): reuse their values
                scaled = model[:-1].fit_transform(X, y)
                model.steps[-1][1].fit_prevalidated(scaled, y, search.oof, search.validated, search.n_splits)
                return model
            return model.fit(X, y)

    def _metrics(self, X, y, counts: dict, search) -> dict:
        """The training record the `train` summary, reports and head files show."""
        m = {"head": self.head, "n_train": int(len(y)), "class_counts": counts, "pca": self.pca,
             "class_weight": self.class_weight, "unvalidated_classes": too_small(y), "C": self.C_}
        if search is not None:
            scores = search.scores(search.features, self.head)
            m.update(cv_accuracy=float(max(scores.values())), cv_folds=int(search.n_splits),
                     cv_scores={str(c): v for c, v in scores.items()}, selection=search.table())
        m["calibration"] = (calibration_note(self.model_) if _has_proba(self) else
                            "none (calibration_folds=0): decisions only, no probabilities")
        m["train_accuracy"] = float(np.mean(self.model_.predict(X) == y))
        return m

    # ---- prediction ------------------------------------------------------------------------------
    def _features(self, X) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, dtype=np.float32, reset=False)

    def decision_function(self, X) -> np.ndarray:
        """Decision values: (N,) for two classes (positive: classes_[1]), else (N, n_classes)."""
        X = self._features(X)
        return self.model_.decision_function(X)

    @available_if(_has_proba)
    def predict_proba(self, X) -> np.ndarray:
        """(N, n_classes) probabilities, columns in the order of ``classes_``."""
        X = self._features(X)
        return self.model_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        """The class the decision function ranks first (also the most probable one)."""
        X = self._features(X)
        return self.model_.predict(X)

    # ---- a head fitted elsewhere -----------------------------------------------------------------
    @classmethod
    def fitted(cls, model, params: dict, metrics: dict | None = None) -> "FeatureHead":
        """A FeatureHead that predicts with `model`, an already fitted head (a loaded head file's ArrayHead,
        a make_head() Pipeline), with the parameters it was trained with; ``fit`` would train anew."""
        names = cls._get_param_names()
        est = cls(**{k: v for k, v in params.items() if k in names})
        est.model_, est.classes_ = model, np.asarray(model.classes_)
        if getattr(model, "n_features_in_", None) is not None:
            est.n_features_in_ = int(model.n_features_in_)
        est.metrics_ = dict(metrics or {})
        C = est.metrics_.get("C", est.C)
        est.C_ = float(C) if isinstance(C, numbers.Real) else None
        return est


def _whole(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def fit_head(head: str, X, y, C: float | str = "auto", folds: int | str = 5, seed: int = 0, pca: int | None = None,
             class_weight: str | None = None):
    """Fit the head on all rows (labels as strings); return (fitted pipeline, metrics dict).

    ``FeatureHead(head, C, folds, seed, pca, class_weight).fit(X, y)``, returned as its ``model_`` and
    ``metrics_``. Any class with at least one image is trained on; classes with one image cannot be validated
    and are listed in metrics['unvalidated_classes']. class_weight: None or 'balanced'.
    """
    est = FeatureHead(head, C, folds, seed, pca, class_weight).fit(np.asarray(X, dtype=np.float32),
                                                                    np.asarray(y, dtype=str))
    return est.model_, est.metrics_
