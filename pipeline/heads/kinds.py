"""Head kinds: what a ``head=`` name means, in one object per name (``KINDS``).

A :class:`HeadKind` holds everything the rest of heads/ and export/ asks about a kind of head:
the scikit-learn classifier it fits (its type and how to build one for a C and a class weight),
the C values ``C="auto"`` chooses from, whether its decision values are margins that need
temperature scaling (pipeline/heads/calibration.py) or logits with probabilities of their own,
which class weights it takes, whether it has a multi-label (one-vs-rest, pipeline/training/multilabel.py)
form, and the ``scorer`` whose arrays a fitted one is saved as (pipeline/heads/arrayhead.py computes
each scorer in numpy, pipeline/export/tfhead.py as TensorFlow ops).

The lookups refuse a name with the messages users see: :func:`get` (with a "did you mean"),
:func:`check_head` (the estimator's parameter check, with the class weight) and
:func:`multi_label_kind` (kinds without a multi-label form). ``pipeline.options.HEADS`` repeats the
names without importing scikit-learn; tests/core/test_options.py keeps the two equal.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC, LinearSVC

from ..errors import UsageError
from ..hints import did_you_mean

CLASS_WEIGHTS = (None, "balanced")


@dataclass(frozen=True)
class HeadKind:
    """One kind of head: its name, its scikit-learn classifier and what the pipeline needs to know of it.

    estimator: the classifier class (a fitted head's type names its kind, see :func:`kind_of`);
    settings: the keyword arguments it is built with besides C and class_weight; c_grid: the C values
    of ``C="auto"``, in grid order (ties go to the middle one); needs_calibration: its decision values
    are margins, turned into probabilities by temperature scaling (False: they are logits, and their
    softmax, or sigmoid for two classes, are its own probabilities); scorer: the ArrayHead scorer
    ("linear" or "rbf") whose arrays a fitted one is saved as; multi_label_ok: it has a one-vs-rest
    form; class_weights: the class_weight values it takes.
    """

    name: str
    estimator: type
    settings: tuple[tuple[str, object], ...]
    c_grid: tuple[float, ...]
    needs_calibration: bool
    scorer: str
    multi_label_ok: bool
    class_weights: tuple = field(default=CLASS_WEIGHTS)

    def make(self, C: float = 1.0, class_weight: str | None = None):
        """An unfitted classifier of this kind with `C` and `class_weight`."""
        return self.estimator(C=float(C), class_weight=class_weight, **dict(self.settings))

    def check_class_weight(self, class_weight) -> None:
        if class_weight not in self.class_weights:
            allowed = " or ".join(repr(w) for w in self.class_weights)
            raise UsageError(f"class_weight must be {allowed}, got class_weight={class_weight!r}")


LINEAR_SVM = HeadKind("linear_svm", LinearSVC, (("max_iter", 20000),), (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
                      needs_calibration=True, scorer="linear", multi_label_ok=True)
SVM = HeadKind("svm", SVC, (("kernel", "rbf"), ("gamma", "scale")), (0.1, 1.0, 10.0, 100.0),
               needs_calibration=True, scorer="rbf", multi_label_ok=False)
LOGREG = HeadKind("logreg", LogisticRegression, (("max_iter", 5000),), (1e-3, 1e-2, 1e-1, 1.0, 10.0),
                  needs_calibration=False, scorer="linear", multi_label_ok=True)

KINDS: dict[str, HeadKind] = {k.name: k for k in (LINEAR_SVM, SVM, LOGREG)}
NAMES = tuple(KINDS)
MULTI_LABEL = tuple(name for name, k in KINDS.items() if k.multi_label_ok)


def get(name: str) -> HeadKind:
    """The kind called `name`; a UsageError with the closest name ("did you mean") otherwise."""
    if name not in KINDS:
        raise UsageError(f"unknown head {name!r}{did_you_mean(name, NAMES)}; choose from {', '.join(NAMES)}")
    return KINDS[name]


def check_head(name: str, class_weight=None) -> HeadKind:
    """The kind called `name`, checked with `class_weight`: errors name the parameter (``head=``)."""
    if name not in KINDS:
        raise UsageError(f"unknown head: head={name!r}; choose one of {', '.join(NAMES)}")
    kind = KINDS[name]
    kind.check_class_weight(class_weight)
    return kind


def multi_label_kind(name: str) -> HeadKind:
    """The kind called `name` if it has a one-vs-rest form; a UsageError naming those that have one otherwise."""
    kind = KINDS.get(name)
    if kind is None or not kind.multi_label_ok:
        raise UsageError(f"multi-label training supports the heads {', '.join(MULTI_LABEL)}, not {name!r} "
                         f"(an RBF SVM per tag cannot be saved as a head file yet); use head='logreg'")
    return kind


def kind_of(estimator) -> HeadKind | None:
    """The kind whose classifier `estimator` is (an instance of its type); None for any other estimator."""
    for kind in KINDS.values():
        if isinstance(estimator, kind.estimator):
            return kind
    return None
