"""Outputs never destroy inputs or foreign files, and every CSV is safe to open in a spreadsheet."""
from __future__ import annotations

import csv

import pytest
from conftest import make_class_tree, noise_image

import pipeline
from pipeline.cli import main
from pipeline.errors import UsageError
from pipeline.outputs import check_output, safe_cell


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    data = make_class_tree(root / "data", per_class=3)
    store = pipeline.featurize(data, "mobilenet_v2_quant", out=root / "feat", progress=False)
    model = pipeline.train(store, head="logreg", C=1.0).save(root / "head.joblib")
    return root, data, model


@pytest.mark.parametrize("target", ["image", "head"])
def test_score_refuses_to_write_over_an_input_image_or_the_head(trained, tmp_path, capsys, target):
    root, data, model = trained
    victim = data / "red" / "red_1.jpg" if target == "image" else model
    before = victim.read_bytes()
    code = main(["score", str(model), str(data / "red"), "--out", str(victim), "--cache", str(tmp_path / "c"),
                 "--no-progress"])
    assert code == 2 and victim.read_bytes() == before
    assert str(victim.name) in capsys.readouterr().err


def test_train_refuses_an_image_path_and_a_foreign_file_but_force_replaces_the_latter(trained, tmp_path, capsys):
    root, data, _ = trained
    image = data / "blue" / "blue_0.jpg"
    before = image.read_bytes()
    assert main(["train", str(root / "feat"), "--out", str(image)]) == 2 and image.read_bytes() == before
    notes = tmp_path / "notes.joblib"
    notes.write_text("my notes")
    assert main(["train", str(root / "feat"), "--C", "1", "--out", str(notes)]) == 2
    assert "--force" in capsys.readouterr().err and notes.read_text() == "my notes"
    assert main(["train", str(root / "feat"), "--C", "1", "--out", str(notes), "--force"]) == 0
    assert pipeline.load(notes).classes_.tolist() == ["blue", "red"]


def test_score_replaces_its_own_csv_but_not_another_file(trained, tmp_path):
    root, data, model = trained
    out = tmp_path / "pred.csv"
    args = ["score", str(model), str(data / "red"), "--out", str(out), "--cache", str(tmp_path / "c"), "--no-progress"]
    assert main(args) == 0 and main(args) == 0  # rerunning overwrites the CSV it wrote
    other = tmp_path / "budget.csv"
    other.write_text("year,amount\n2026,10\n")
    assert main(args[:4] + [str(other)] + args[5:]) == 2 and other.read_text().startswith("year")


def test_check_output_refuses_folders_links_and_image_names(tmp_path):
    with pytest.raises(UsageError, match="is a folder"):
        check_output(tmp_path, "csv")
    (tmp_path / "t.csv").write_text("path,prediction\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "t.csv")
    with pytest.raises(UsageError, match="not a regular file"):
        check_output(tmp_path / "link.csv", "csv")
    with pytest.raises(UsageError, match="image file"):
        check_output(tmp_path / "x.png", "csv")


def test_formula_cells_are_neutralised_in_every_csv(tmp_path):
    # file names and class names a spreadsheet would run: =1+1.jpg, @SUM(A1).jpg, a class =cmd|' /C calc'!A0
    evil_class = "=cmd|' /C calc'!A0"  # holds a slash: only a labels CSV can name such a class
    data = tmp_path / "data"
    data.mkdir()
    labels = [("=1+1.jpg", evil_class), ("@SUM(A1).jpg", "blue")]
    for i in range(3):
        labels += [(f"r{i}.jpg", evil_class), (f"b{i}.jpg", "blue")]
    for i, (name, label) in enumerate(labels):
        noise_image(i, base=(230, 30, 30) if label != "blue" else (30, 30, 230)).save(data / name)
    with open(tmp_path / "labels.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("id", "label"), *labels])
    store = pipeline.featurize(data, "mobilenet_v2_quant", out=tmp_path / "feat", labels=tmp_path / "labels.csv",
                               progress=False)
    model = pipeline.train(store, head="logreg", C=1.0).save(tmp_path / "h.joblib")
    test = tmp_path / "test"
    test.mkdir()
    noise_image(9, base=(230, 30, 30)).save(test / "-2+3.jpg")
    assert main(["score", str(model), str(test), "--out", str(tmp_path / "p.csv"), "--cache", str(tmp_path / "c"),
                 "--no-progress"]) == 0
    assert main(["score", str(model), str(test), "--out", str(tmp_path / "k.csv"), "--cache", str(tmp_path / "c"),
                 "--kaggle", evil_class, "--no-progress"]) == 0
    assert main(["split", str(tmp_path / "feat"), "--out", str(tmp_path / "s.csv")]) == 0
    assert main(["suspects", str(tmp_path / "feat"), "--C", "1", "--csv", str(tmp_path / "q.csv")]) == 0
    cells = []
    for name in ("p.csv", "k.csv", "s.csv", "q.csv"):
        cells += [c for row in csv.reader(open(tmp_path / name, encoding="utf-8")) for c in row]
    risky = [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert risky == []
    assert f"'{evil_class}" in cells and "'-2+3.jpg" in cells  # read back: the same text, with an apostrophe
    assert "'=1+1.jpg" in cells
    assert any(c.endswith("@SUM(A1).jpg") for c in cells)


def test_safe_cell_leaves_plain_values_alone():
    assert safe_cell("cats/1.jpg") == "cats/1.jpg" and safe_cell("0.25") == "0.25" and safe_cell(3) == 3
    assert safe_cell("+1") == "'+1" and safe_cell("\tx") == "'\tx"


def test_convert_refuses_an_image_its_input_and_a_foreign_file_but_force_replaces_the_latter(trained, tmp_path, capsys):
    """RELIABILITY B08/E-NOPARTIAL (outputs never destroy inputs): `convert --out` wrote a head over a photo,
    over the file being converted and over any other file, with exit 0; it is refused like `train --out`."""
    root, data, model = trained
    image = data / "red" / "red_2.jpg"
    before, head_before = image.read_bytes(), model.read_bytes()
    assert main(["convert", str(model), "--out", str(image)]) == 2 and image.read_bytes() == before
    assert main(["convert", str(model), "--out", str(model)]) == 2 and model.read_bytes() == head_before
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert main(["convert", str(model), "--out", str(notes)]) == 2 and notes.read_text() == "my notes"
    assert "force" in capsys.readouterr().err
    assert main(["convert", str(model), "--out", str(notes), "--force"]) == 0
    assert pipeline.load(notes).classes_.tolist() == ["blue", "red"]


@pytest.mark.slow
@pytest.mark.parametrize("umask, want", [(0o022, 0o644), (0o077, 0o600)])
def test_every_output_follows_the_umask_and_temp_files_stay_private(trained, tmp_path, umask, want, monkeypatch):
    """E-NOPARTIAL (outputs written through a temp file and a rename): the final files get 0o666 & ~umask
    (a colleague or a web server can read a score CSV under umask 022), while a temp file is 0600 as
    long as it is being written."""
    import os
    import stat

    from pipeline import outputs

    _, data, _ = trained
    seen = []
    real_fchmod = os.fchmod

    def spy(fd, mode):  # the temp file's permissions just before it is opened to others
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fchmod(fd, mode)

    monkeypatch.setattr(outputs.os, "fchmod", spy)
    old = os.umask(umask)
    try:
        store, head = tmp_path / "store", tmp_path / "m.head.npz"
        assert main(["featurize", str(data), "--out", str(store), "--backbone", "mobilenet_v2_quant",
                     "--no-progress"]) == 0
        assert main(["train", str(store), "--C", "1", "--head", "logreg", "--out", str(head)]) == 0
        assert main(["score", str(head), str(data), "--out", str(tmp_path / "p.csv"),
                     "--cache", str(tmp_path / "c"), "--no-progress"]) == 0
        for ext in ("parquet", "npz"):
            assert main(["export-features", str(store), "--out", str(tmp_path / f"x.{ext}")]) == 0
        assert main(["evaluate", str(head), str(store), "--report", str(tmp_path / "rep")]) == 0
    finally:
        os.umask(old)
    finals = [head, tmp_path / "p.csv", tmp_path / "x.parquet", tmp_path / "x.npz", tmp_path / "rep" / "index.html",
              store / "meta.json", store / "rows.jsonl", store / "report.json"]
    finals += [f for f in (store / "segments").rglob("*") if f.is_file()]
    modes = {str(f.relative_to(tmp_path)): oct(stat.S_IMODE(f.stat().st_mode)) for f in finals}
    assert set(modes.values()) == {oct(want)}, modes
    assert seen and set(seen) == {0o600}


def test_a_full_disk_while_writing_an_output_names_it_and_keeps_the_old_file(trained, tmp_path, capsys, monkeypatch):
    """B09, E-NOPARTIAL: ENOSPC while a head (or any output) is written names the file and what to do; the
    previous file is whole and no temp file is left."""
    import errno

    from pipeline import outputs

    root, _, _ = trained
    head = tmp_path / "m.head.npz"
    assert main(["train", str(root / "feat"), "--C", "1", "--head", "logreg", "--out", str(head)]) == 0
    before = head.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full)
    capsys.readouterr()
    assert main(["train", str(root / "feat"), "--C", "0.5", "--head", "logreg", "--out", str(head)]) == 1
    err = capsys.readouterr().err
    assert f"could not write {head}: No space left on device (ENOSPC)" in err
    assert "free space on it, or choose another --out" in err and "previous m.head.npz" in err
    assert head.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.head.npz"]
