"""An :class:`~pipeline.heads.arrayhead.ArrayHead` written as TensorFlow ops: features -> probabilities.

The same arrays and the same steps as ``ArrayHead.predict_proba`` (scale, optional PCA, the
linear or RBF decision values with scikit-learn's one-vs-rest shape, then temperature scaling,
logistic softmax/sigmoid, the legacy per-class sigmoids, or a multi-label head's independent per-tag sigmoids), so an exported model needs neither
scikit-learn nor this package. ``dtype`` float64 reproduces the numpy code to ~1e-12 (SavedModel);
TFLite has no float64 kernels, so it gets float32 (~1e-6). ``SCORERS`` holds the decision values of each
scorer a head kind can name (``HeadKind.scorer``, pipeline/heads/kinds.py), as ``arrayhead.SCORERS`` does.
"""
from __future__ import annotations

import numpy as np

from ..heads.arrayhead import ArrayHead


def head_probabilities(head: ArrayHead, features, dtype=None):
    """(N, D) float features -> (N, n_classes) float32 probabilities, columns in ``head.classes_`` order."""
    import tensorflow as tf

    dtype = dtype or tf.float64
    a = {k: tf.constant(v, dtype) for k, v in head.arrays.items() if k != "rbf.n_support"}
    z = (tf.cast(features, dtype) - a["scale.mean"]) / a["scale.scale"]
    if "pca.components" in a:
        z = tf.matmul(z - a["pca.mean"], a["pca.components"], transpose_b=True)
    f = SCORERS[head.scorer](head, a, z)
    if head.multi_label:  # K independent tags: p_k = sigmoid(alpha_k f_k), as ArrayHead.predict_proba
        return tf.cast(tf.sigmoid(a["ovr.alpha"] * f), tf.float32)
    if len(head.classes_) == 2:  # binary decision values f -> the columns [0, f]
        f = tf.concat([tf.zeros_like(f), f], axis=1)
    if head.probabilities == "temperature":
        p = tf.nn.softmax(a["calibration.alpha"] * f, axis=1)
    elif head.probabilities == "platt":
        p = _platt(a, f, len(head.classes_))
    else:
        p = tf.nn.softmax(f, axis=1)
    return tf.cast(p, tf.float32)


def _linear(head: ArrayHead, a, z):
    import tensorflow as tf

    return tf.matmul(z, a["linear.coef"], transpose_b=True) + a["linear.intercept"]


def _rbf(head: ArrayHead, a, z):
    """libsvm's one-vs-one decisions, then (3+ classes) scikit-learn's ovr votes + confidences."""
    import tensorflow as tf

    sv, dual = a["rbf.support_vectors"], a["rbf.dual_coef"]
    d2 = (tf.reduce_sum(z * z, axis=1, keepdims=True) + tf.reduce_sum(sv * sv, axis=1)[None, :]
          - 2 * tf.matmul(z, sv, transpose_b=True))
    k = tf.exp(-a["rbf.gamma"] * d2)
    n = len(head.classes_)
    if n == 2:
        return tf.matmul(k, dual[0][:, None]) + a["rbf.intercept"]
    start = np.concatenate([[0], np.cumsum(head.arrays["rbf.n_support"].astype(int))])
    pairs, p = [], 0
    for i in range(n):
        for j in range(i + 1, n):
            si, sj = slice(int(start[i]), int(start[i + 1])), slice(int(start[j]), int(start[j + 1]))
            pairs.append(tf.linalg.matvec(k[:, si], dual[j - 1, si]) + tf.linalg.matvec(k[:, sj], dual[i, sj])
                         + a["rbf.intercept"][p])
            p += 1
    return _ovr(pairs, n, z.dtype)


SCORERS = {"linear": _linear, "rbf": _rbf}  # scorer -> (head, constant arrays, features) -> decision values


def _ovr(pairs, n: int, dtype):
    """scikit-learn's _ovr_decision_function: votes plus confidences squashed into (-1/3, 1/3)."""
    import tensorflow as tf

    votes, conf, p = [0.0] * n, [0.0] * n, 0
    for i in range(n):
        for j in range(i + 1, n):
            won = tf.cast(pairs[p] >= 0, dtype)
            votes[i], votes[j] = votes[i] + won, votes[j] + (1 - won)
            conf[i], conf[j] = conf[i] + pairs[p], conf[j] - pairs[p]
            p += 1
    votes, conf = tf.stack(votes, axis=1), tf.stack(conf, axis=1)
    return votes + conf / (3 * (tf.abs(conf) + 1))


def _platt(a, f, n: int):
    """CalibratedClassifierCV(method='sigmoid'): sigmoid(-(a f + b)) per class, rows normalised."""
    import tensorflow as tf

    if n == 2:
        p = tf.sigmoid(-(a["calibration.a"][0] * f[:, 1:] + a["calibration.b"][0]))
        return tf.concat([1 - p, p], axis=1)
    p = tf.sigmoid(-(a["calibration.a"] * f + a["calibration.b"]))
    total = tf.reduce_sum(p, axis=1, keepdims=True)
    return tf.where(total > 0, p / tf.where(total > 0, total, tf.ones_like(total)), tf.ones_like(p) / n)
