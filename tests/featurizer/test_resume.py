"""A featurize process killed with SIGKILL mid-run resumes to exactly the result of a clean run."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import kill_once_committed, noise_class_tree

import pipeline


def _featurize_cmd(data, out):
    return [sys.executable, "-m", "pipeline", "featurize", str(data), "--out", str(out), "--batch-size", "4",
            "--workers", "1", "--no-progress"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_clean_run(tmp_path):
    data = tmp_path / "data"
    n = 400
    noise_class_tree(data, n, (320, 240))
    out = tmp_path / "store"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    kill_once_committed(_featurize_cmd(data, out), out / "rows.jsonl", 40, timeout=120, env=env)
    partial = pipeline.FeatureStore.open(out)  # committed batches stay readable
    assert 40 <= len(partial) < n, "the run was not interrupted mid-way"
    assert partial.features.shape == (len(partial), 1280)

    resumed = subprocess.run(_featurize_cmd(data, out), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(partial)} reused" in resumed.stdout
    store = pipeline.FeatureStore.open(out)
    clean = pipeline.featurize(data, out=tmp_path / "clean", progress=False)
    assert len(store) == n and sorted(store.paths) == clean.paths
    order = np.argsort(store.paths)
    np.testing.assert_array_equal(store.features[order], clean.features)
