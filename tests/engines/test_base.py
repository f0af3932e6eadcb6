"""How every engine's run ends (pipeline.engines.base.commit_run) and what its report tells about the store it leaves."""
from __future__ import annotations

from conftest import make_class_tree

import pipeline


def test_rows_of_files_gone_from_the_folder_are_named_when_kept(tmp_path):
    """RELIABILITY B05 (stale cache): without --prune a deleted or moved image keeps its row, and train still
    uses it; the run said only "3 images ... (4 rows)". It now names those rows and the fix."""
    data = make_class_tree(tmp_path / "data", per_class=2)
    out = tmp_path / "store"
    pipeline.featurize(data, out=out, progress=False)
    (data / "red" / "red_1.jpg").unlink()  # e.g. a bad photo cleaned out of the folder
    run = pipeline.featurize(data, out=out, progress=False, report=True)
    assert run.not_in_folder == ["red/red_1.jpg"] and len(run.store) == 4
    assert "1 rows are of files no longer in the folder (e.g. red/red_1.jpg)" in run.summary()
    assert "--prune drops them" in run.summary() and run.store.report["not_in_folder"] == 1
    pruned = pipeline.featurize(data, out=out, progress=False, report=True, prune=True)
    assert pruned.pruned == 1 and pruned.not_in_folder == [] and len(pruned.store) == 3
    assert "no longer in the folder (e.g." not in pruned.summary()
