"""Zero-shot: class names matched to ImageNet labels, the network's scores restricted to them."""
from __future__ import annotations

import numpy as np
from scipy.special import softmax

from pipeline.heads.arrayhead import export
from pipeline.training.zeroshot import (
    imagenet_indices,
    labels_for,
    normalise,
    zero_shot_candidates,
    zero_shot_head,
)

LABELS = labels_for(1001)


def test_names_match_labels_whatever_their_case_separators_or_synonym():
    assert normalise(" Golden_Retriever ") == normalise("golden-retriever") == "golden retriever"
    assert imagenet_indices(["golden_retriever", "Tabby", "Siamese-cat"], LABELS) == [208, 282, 285]
    assert labels_for(1000)[207] == LABELS[208]  # a 1000-way output has no background row


def test_any_unknown_name_or_two_names_for_one_label_means_no_zero_shot():
    assert imagenet_indices(["tabby", "Abyssinian"], LABELS) is None
    assert imagenet_indices(["tabby", "tabby cat"], LABELS) is None


def test_the_head_is_the_softmax_of_the_logits_over_the_classes_and_saves_as_arrays():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (6, 1001))
    head = zero_shot_head(["tabby", "golden_retriever"], [282, 208], 1001)  # given in any order
    assert list(head.classes_) == ["golden_retriever", "tabby"]
    expected = softmax(logits[:, [208, 282]], axis=1)
    assert np.allclose(head.predict_proba(logits), expected)
    assert np.allclose(export(head).predict_proba(logits), expected, atol=1e-6)


def test_a_store_offers_zero_shot_only_when_every_class_is_named():
    logits = np.random.default_rng(1).normal(0, 1, (4, 1001))
    y = np.array(["tabby", "golden retriever", "tabby", "golden retriever"])
    found = zero_shot_candidates({"penultimate": np.zeros((4, 5)), "logits": logits}, y)
    assert list(found) == ["logits"] and np.allclose(found["logits"][0], logits[:, [208, 282]])
    assert zero_shot_candidates({"logits": logits}, np.array(["tabby", "x", "tabby", "x"])) == {}
