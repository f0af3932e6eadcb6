"""A featurize process killed with SIGKILL mid-run resumes to exactly the result of a clean run."""
from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import kill_once_committed, noise_class_tree, pipeline_cmd

import pipeline
from pipeline.cli import main


def _featurize_args(data, out):
    return ["featurize", str(data), "--out", str(out), "--batch-size", "4", "--workers", "1", "--no-progress",
            "--layer", "penultimate"]  # one store (two stores killed mid-way: tests/featurizer/test_layers.py)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_clean_run(tmp_path, capsys):
    data = tmp_path / "data"
    n = 160
    noise_class_tree(data, n, (320, 240))
    out = tmp_path / "store"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    # commits every 0.1 s (pipeline_cmd): killed right after the 40th row, a folder of 160 is still mostly to do
    kill_once_committed(pipeline_cmd(*_featurize_args(data, out)), out / "rows.jsonl", 40, timeout=120, env=env)
    partial = pipeline.FeatureStore.open(out)  # committed batches stay readable
    assert 40 <= len(partial) < n, "the run was not interrupted mid-way"
    assert partial.features.shape == (len(partial), 1280)

    capsys.readouterr()
    assert main(_featurize_args(data, out)) == 0  # the resumed run: in this process
    assert f"{len(partial)} reused" in capsys.readouterr().out
    store = pipeline.FeatureStore.open(out)
    clean = pipeline.featurize(data, layer="penultimate", out=tmp_path / "clean", progress=False)
    assert len(store) == n and sorted(store.paths) == clean.paths
    order = np.argsort(store.paths)
    np.testing.assert_array_equal(store.features[order], clean.features)
