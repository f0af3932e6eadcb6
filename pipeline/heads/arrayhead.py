"""A fitted head as plain arrays, and the numpy code that scores with them (no scikit-learn needed).

The heads this project trains are StandardScaler -> optional PCA -> a linear model (LinearSVC,
LogisticRegression) or an RBF SVC -> probabilities (temperature scaling for the SVMs, the
logistic function's own for logreg). ``from_sklearn`` takes those arrays out of a fitted
Pipeline; ``ArrayHead`` recomputes ``decision_function``/``predict_proba``/``predict`` from
them, the same way scikit-learn does (to ~1e-12), so a saved head needs no pickle and loads
under any scikit-learn version. Arrays that are not finite numbers, or whose scores on a probe batch
of features are not (``_probe``: a scale of 1e-300 is finite, the features it divides are not), are
refused naming the array. Array names (all float except ``rbf.n_support``):

    scale.mean, scale.scale             StandardScaler
    pca.components, pca.mean            optional PCA (no whitening)
    linear.coef, linear.intercept       scorer "linear"
    rbf.support_vectors, rbf.dual_coef, rbf.intercept, rbf.n_support, rbf.gamma    scorer "rbf"
    calibration.alpha                   probabilities "temperature"
    calibration.a, calibration.b        probabilities "platt": the per-class sigmoids of the old
                                        CalibratedClassifierCV heads (head-1 files converted)
    ovr.alpha, ovr.threshold            probabilities "ovr_sigmoid" (multi-label, pipeline/training/multilabel.py):
                                        K independent p_k = sigmoid(alpha_k f_k), tag k predicted
                                        when p_k >= threshold_k; linear.coef is (K, D) even for K = 2
"""
from __future__ import annotations

import numpy as np

SCORERS = ("linear", "rbf")
PROBABILITIES = ("temperature", "sigmoid", "softmax", "platt", "ovr_sigmoid")


def _softmax(Z: np.ndarray) -> np.ndarray:
    Z = Z - Z.max(axis=1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(axis=1, keepdims=True)


def _matrix(f: np.ndarray) -> np.ndarray:
    return np.column_stack([np.zeros_like(f), f]) if f.ndim == 1 else f


class ArrayHead:
    """Scores from arrays. Raises ValueError naming what is inconsistent when the arrays do not fit."""

    def __init__(self, classes, arrays: dict, scorer: str, probabilities: str):
        self.classes_ = np.asarray(list(classes), dtype=object)
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.scorer, self.probabilities = scorer, probabilities
        self._check()

    @property
    def n_features_in_(self) -> int:
        return int(self.arrays["scale.mean"].shape[0])

    @property
    def multi_label(self) -> bool:
        return self.probabilities == "ovr_sigmoid"

    @property
    def thresholds_(self) -> np.ndarray | None:
        """Per-tag thresholds of a multi-label head (None for a single-label one)."""
        return self.arrays["ovr.threshold"] if self.multi_label else None

    # ---- scoring -------------------------------------------------------------------------------
    def transform(self, X) -> np.ndarray:
        """Standardise (and project) as the fitted Pipeline did, in the dtype scikit-learn used."""
        a = self.arrays
        X = np.asarray(X)
        Z = np.asarray(X - a["scale.mean"], dtype=X.dtype)
        Z = np.asarray(Z / a["scale.scale"], dtype=X.dtype)
        if "pca.components" in a:
            Z = (Z - a["pca.mean"]) @ a["pca.components"].T
        return Z

    def decision_function(self, X) -> np.ndarray:
        Z = self.transform(X)
        f = self._linear(Z) if self.scorer == "linear" else self._rbf(Z)
        return f[:, 0] if len(self.classes_) == 2 and not self.multi_label else f

    def predict_proba(self, X) -> np.ndarray:
        if self.multi_label:
            z = self.arrays["ovr.alpha"] * self.decision_function(X).astype(np.float64)
            return np.exp(-np.logaddexp(0.0, -z))  # sigmoid(z), without overflow
        F = _matrix(self.decision_function(X)).astype(np.float64)
        if self.probabilities == "temperature":
            return _softmax(float(self.arrays["calibration.alpha"]) * F)
        if self.probabilities == "platt":
            return self._platt(F)
        return _softmax(F)  # logreg: binary sigmoid == softmax([0, f]); multinomial softmax

    def predict(self, X) -> np.ndarray:
        """Class names (single-label); (N, K) booleans, probability >= threshold (multi-label)."""
        if self.multi_label:
            return self.predict_proba(X) >= self.thresholds_[None, :]
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def _platt(self, F):
        """CalibratedClassifierCV(method='sigmoid'): expit(-(a f + b)) per class, rows normalised."""
        a, b = self.arrays["calibration.a"], self.arrays["calibration.b"]
        if len(self.classes_) == 2:
            p = 1 / (1 + np.exp(a[0] * F[:, 1] + b[0]))
            return np.column_stack([1 - p, p])
        P = 1 / (1 + np.exp(a * F + b))
        total = P.sum(axis=1, keepdims=True)
        return np.divide(P, total, out=np.full_like(P, 1 / P.shape[1]), where=total != 0)

    def _linear(self, Z):
        return Z @ self.arrays["linear.coef"].T + self.arrays["linear.intercept"]

    def _rbf(self, Z):
        """libsvm's one-vs-one decisions, then scikit-learn's one-vs-rest shape (votes + confidences)."""
        a = self.arrays
        sv, dual, n_sv = a["rbf.support_vectors"], a["rbf.dual_coef"], a["rbf.n_support"].astype(int)
        Z = np.asarray(Z, dtype=np.float64)
        d2 = (Z * Z).sum(1)[:, None] + (sv * sv).sum(1)[None, :] - 2 * Z @ sv.T
        K = np.exp(-float(a["rbf.gamma"]) * d2)
        n = len(self.classes_)
        if n == 2:
            return K @ dual[0][:, None] + a["rbf.intercept"]
        start = np.concatenate([[0], np.cumsum(n_sv)])
        pairs, p = np.zeros((len(Z), n * (n - 1) // 2)), 0
        for i in range(n):
            for j in range(i + 1, n):
                si, sj = slice(start[i], start[i + 1]), slice(start[j], start[j + 1])
                pairs[:, p] = K[:, si] @ dual[j - 1, si] + K[:, sj] @ dual[i, sj] + a["rbf.intercept"][p]
                p += 1
        return _ovr(pairs, n)

    # ---- validation ----------------------------------------------------------------------------
    def _check(self) -> None:
        a, n = self.arrays, len(self.classes_)
        need = {"scale.mean", "scale.scale"} | {
            "linear": {"linear.coef", "linear.intercept"},
            "rbf": {"rbf.support_vectors", "rbf.dual_coef", "rbf.intercept", "rbf.n_support", "rbf.gamma"},
        }.get(self.scorer, set())
        if self.scorer not in SCORERS or self.probabilities not in PROBABILITIES:
            raise ValueError(f"unknown scorer {self.scorer!r} or probabilities {self.probabilities!r}")
        if self.probabilities == "temperature":
            need.add("calibration.alpha")
        if self.probabilities == "platt":
            need |= {"calibration.a", "calibration.b"}
        if self.multi_label:
            need |= {"ovr.alpha", "ovr.threshold"}
            if self.scorer != "linear":
                raise ValueError(f"multi-label heads are linear, not {self.scorer!r}")
        missing = sorted(need - set(a))
        if missing:
            raise ValueError(f"arrays missing: {', '.join(missing)}")
        if n < 2 or len(set(map(str, self.classes_))) != n:
            raise ValueError(f"needs at least 2 distinct class names, got {list(self.classes_)}")
        for k, v in a.items():
            if v.dtype.kind not in "fiu" or not np.all(np.isfinite(v)):
                raise ValueError(f"array {k} is not finite numbers ({v.dtype})")
        self._check_shapes(n)
        self._probe()

    def _check_shapes(self, n: int) -> None:
        a = self.arrays
        d = a["scale.mean"].shape
        if len(d) != 1 or a["scale.scale"].shape != d or np.any(a["scale.scale"] == 0):
            raise ValueError("scale.mean and scale.scale must be vectors of one length, scale non-zero")
        width = d[0]
        if "pca.components" in a:
            c = a["pca.components"]
            if c.ndim != 2 or c.shape[1] != width or a.get("pca.mean", np.zeros(0)).shape != (width,):
                raise ValueError(f"pca arrays do not fit {width} features")
            width = c.shape[0]
        rows = 1 if n == 2 and not self.multi_label else n
        if self.scorer == "linear":
            if a["linear.coef"].shape != (rows, width) or a["linear.intercept"].shape != (rows,):
                raise ValueError(f"linear.coef/intercept must be ({rows}, {width})/({rows},) for {n} classes")
        else:
            sv, n_sv = a["rbf.support_vectors"], a["rbf.n_support"]
            if (sv.ndim != 2 or sv.shape[1] != width or n_sv.shape != (n,) or int(n_sv.sum()) != len(sv)
                    or a["rbf.dual_coef"].shape != (n - 1, len(sv)) or a["rbf.intercept"].shape != (n * (n - 1) // 2,)
                    or a["rbf.gamma"].shape != () or np.any(n_sv < 0)):
                raise ValueError(f"rbf arrays do not fit {n} classes of {width} features")
        cols = 1 if n == 2 else n
        if self.probabilities == "platt" and not (a["calibration.a"].shape == a["calibration.b"].shape == (cols,)):
            raise ValueError(f"calibration.a and calibration.b must hold {cols} numbers")
        if self.multi_label:
            alpha, t = a["ovr.alpha"], a["ovr.threshold"]
            if alpha.shape != (n,) or t.shape != (n,) or np.any(alpha <= 0) or np.any((t <= 0) | (t > 1)):
                raise ValueError(f"ovr.alpha and ovr.threshold must hold {n} numbers, alpha > 0, threshold in (0, 1]")
        alpha = a.get("calibration.alpha")
        if self.probabilities == "temperature" and not (alpha.shape == () and alpha > 0):
            raise ValueError("calibration.alpha must be one number above 0")

    def _probe(self) -> None:
        """Refuse arrays that make non-finite scores on a probe batch (float32 features at zero, at the mean
        and spread around it, as a backbone gives them), naming the first array whose step goes non-finite:
        finite arrays can still overflow (a scale of 1e-300 turns any feature off the mean into inf)."""
        a, X = self.arrays, self.probe_batch()
        with np.errstate(all="ignore"):
            def centred():
                return np.asarray(X - a["scale.mean"], X.dtype)
            steps = [("scale.mean", centred),
                     ("scale.scale", lambda: np.asarray(centred() / a["scale.scale"], X.dtype))]
            if "pca.components" in a:
                steps.append(("pca.mean, pca.components", lambda: self.transform(X)))
            scorer = ("linear.coef, linear.intercept" if self.scorer == "linear" else
                      "rbf.support_vectors, rbf.gamma, rbf.dual_coef, rbf.intercept")
            steps.append((scorer, lambda: self.decision_function(X)))
            calibration = {"temperature": "calibration.alpha", "platt": "calibration.a, calibration.b",
                           "ovr_sigmoid": "ovr.alpha"}.get(self.probabilities, scorer)
            steps.append((calibration, lambda: self.predict_proba(X)))
            for names, step in steps:
                if not np.all(np.isfinite(step())):
                    what = f"arrays {names} make" if "," in names else f"array {names} makes"
                    raise ValueError(f"{what} non-finite scores (inf or nan) on a probe batch of features: "
                                     f"the head is damaged or was crafted; retrain it")

    def probe_batch(self, rows: int = 16) -> np.ndarray:
        """float32 features to probe the head with: zeros, the mean, and rows spread around the mean."""
        mean = np.asarray(self.arrays["scale.mean"], np.float64)
        spread = np.maximum(np.abs(mean), 1.0)
        noise = np.random.default_rng(0).normal(0.0, 1.0, (rows, len(mean)))
        X = np.vstack([np.zeros_like(mean), mean, mean + spread, mean - spread, mean + spread * noise])
        big = float(np.finfo(np.float32).max)
        return np.clip(X, -big, big).astype(np.float32)


def _ovr(pairs: np.ndarray, n: int) -> np.ndarray:
    """scikit-learn's _ovr_decision_function: votes plus confidences squashed into (-1/3, 1/3)."""
    votes, conf, p = np.zeros((len(pairs), n)), np.zeros((len(pairs), n)), 0
    for i in range(n):
        for j in range(i + 1, n):
            votes[:, i] += pairs[:, p] >= 0
            votes[:, j] += pairs[:, p] < 0
            conf[:, i] += pairs[:, p]
            conf[:, j] -= pairs[:, p]
            p += 1
    return votes + conf / (3 * (np.abs(conf) + 1))


def from_sklearn(model) -> ArrayHead:
    """The arrays of a fitted make_head() Pipeline (scale, optional pca, clf). ValueError for anything else.

    The classifier's head kind (pipeline/heads/kinds.py, found by its type) names the scorer its arrays are.
    """
    from .calibration import TemperatureCalibrated
    from .kinds import kind_of

    steps = dict(getattr(model, "named_steps", {}))
    if type(steps.get("clf")).__name__ == "OneVsRest":
        return _from_one_vs_rest(model)
    if set(steps) - {"scale", "pca", "clf"} or "scale" not in steps or "clf" not in steps:
        raise ValueError(f"not a head this project trains: steps {list(steps) or type(model).__name__}")
    clf, arrays = steps["clf"], _scale_arrays(steps)
    bare = kind_of(clf)  # an uncalibrated classifier of a head kind
    if isinstance(clf, TemperatureCalibrated):
        arrays["calibration.alpha"] = np.asarray(clf.alpha_, dtype=np.float64)
        est, probabilities = clf.estimator_, "temperature"
    elif type(clf).__name__ == "CalibratedClassifierCV":  # head-1 files: per-class sigmoids, one SVM
        est, probabilities = _legacy_calibrated(clf, arrays)
    elif bare is not None and not bare.needs_calibration:  # logits: their own probabilities
        est, probabilities = clf, "sigmoid" if len(clf.classes_) == 2 else "softmax"
    else:
        raise ValueError(f"cannot save a {type(clf).__name__} head")
    kind = kind_of(est)
    if kind is None:
        raise ValueError(f"cannot save a {type(est).__name__} head")
    arrays.update(_SCORER_ARRAYS[kind.scorer](est))
    return ArrayHead(model.classes_, arrays, kind.scorer, probabilities)


def _linear_arrays(est) -> dict:
    return {"linear.coef": est.coef_, "linear.intercept": np.atleast_1d(est.intercept_)}


def _rbf_arrays(est) -> dict:
    if est.kernel != "rbf" or est.decision_function_shape != "ovr":
        raise ValueError(f"only RBF SVCs with ovr decisions can be saved, not kernel={est.kernel!r}")
    return {"rbf.support_vectors": est.support_vectors_, "rbf.dual_coef": est.dual_coef_,
            "rbf.intercept": est.intercept_, "rbf.n_support": est.n_support_.astype(np.int64),
            "rbf.gamma": np.asarray(est._gamma, dtype=np.float64)}


_SCORER_ARRAYS = {"linear": _linear_arrays, "rbf": _rbf_arrays}  # a fitted classifier's arrays, per scorer


def _scale_arrays(steps: dict) -> dict:
    scaler, pca = steps["scale"], steps.get("pca")
    arrays = {"scale.mean": scaler.mean_, "scale.scale": scaler.scale_}
    if pca is not None:
        if pca.whiten:
            raise ValueError("a whitened PCA cannot be saved")
        arrays.update({"pca.components": pca.components_, "pca.mean": pca.mean_})
    return arrays


def _from_one_vs_rest(model) -> ArrayHead:
    """A multi-label head: one linear binary head per tag, stacked, with its alpha and threshold."""
    from .kinds import kind_of

    steps = dict(model.named_steps)
    ovr, arrays = steps["clf"], _scale_arrays(steps)
    coef, intercept = [], []
    for tag, est in zip(ovr.classes_, ovr.estimators_):
        if isinstance(est, bool):
            raise ValueError(f"tag {tag!r} is constant in the training rows; no head was fitted for it")
        if getattr(kind_of(est), "scorer", None) != "linear":
            raise ValueError(f"cannot save a multi-label {type(est).__name__} head")
        coef.append(np.ravel(est.coef_))
        intercept.append(float(np.ravel(est.intercept_)[0]))
    arrays.update({"linear.coef": np.stack(coef), "linear.intercept": np.asarray(intercept),
                   "ovr.alpha": np.asarray(ovr.alphas_, dtype=np.float64),
                   "ovr.threshold": np.asarray(ovr.thresholds_, dtype=np.float64)})
    return ArrayHead(ovr.classes_, arrays, "linear", "ovr_sigmoid")


def _legacy_calibrated(clf, arrays: dict):
    if clf.method != "sigmoid" or len(clf.calibrated_classifiers_) != 1:
        raise ValueError("only CalibratedClassifierCV(method='sigmoid', ensemble=False) heads can be converted")
    cc = clf.calibrated_classifiers_[0]
    arrays["calibration.a"] = np.array([c.a_ for c in cc.calibrators], dtype=np.float64)
    arrays["calibration.b"] = np.array([c.b_ for c in cc.calibrators], dtype=np.float64)
    return cc.estimator, "platt"


def export(model, n_probe: int = 32, atol: float = 1e-6) -> ArrayHead:
    """from_sklearn(model), checked: on random rows around the training data its probabilities must equal
    the model's (within `atol`), else ValueError. An ArrayHead is returned as it is."""
    if isinstance(model, ArrayHead):
        return model
    head = from_sklearn(model)
    rng = np.random.default_rng(0)
    a = head.arrays
    X = (a["scale.mean"] + a["scale.scale"] * rng.normal(0, 1.5, (n_probe, head.n_features_in_))).astype(np.float32)
    diff = float(np.max(np.abs(head.predict_proba(X) - model.predict_proba(X))))
    if not diff <= atol:
        raise ValueError(f"the arrays do not reproduce the fitted head (probabilities differ by {diff:.3g})")
    return head
