"""predict-imagenet --classes: ImageNet names matched as zero-shot matches them; unknown names named."""
from __future__ import annotations

import pytest

from pipeline.errors import UsageError
from pipeline.scoring.imagenet import _class_indices, imagenet_labels


def test_classes_are_matched_whatever_their_case_or_separators():
    assert _class_indices(["Tabby", "golden_retriever"], imagenet_labels(1001)) == [282, 208]


def test_a_name_that_matches_no_label_is_named_in_the_error():
    with pytest.raises(UsageError, match="Abyssinian match no ImageNet label"):
        _class_indices(["tabby", "Abyssinian"], imagenet_labels(1001))
