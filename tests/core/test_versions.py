"""versions(): what every artifact records about the libraries, read without importing importlib.metadata."""
from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
import sys

from pipeline.versions import DISTRIBUTIONS, installed_versions, normalized, versions


def test_every_installed_distribution_has_the_version_importlib_metadata_gives():
    found = installed_versions()
    names = {normalized(d.metadata["Name"]) for d in md.distributions()}
    assert len(names) > 20  # the environment the tests run in
    assert {n: found.get(n) for n in names} == {n: md.version(n) for n in names}


def test_versions_lists_this_package_and_python_and_leaves_out_what_is_not_installed(monkeypatch):
    v = versions()
    assert v["python"] == platform.python_version()
    assert v["tf-feature-pipeline"] == md.version("tf-feature-pipeline")
    assert set(v) <= {"python", *DISTRIBUTIONS}
    v["numpy"] = "changed by a caller"
    assert versions()["numpy"] == md.version("numpy")  # each call a new dict


def test_an_egg_info_gives_its_pkg_info_version_and_the_first_on_the_path_wins(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    (first / "My_Lib.egg-info").mkdir(parents=True)
    (first / "My_Lib.egg-info" / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: my-lib\nVersion: 1.2.3\n\n"
                                                         "Version: 9 (the description, not a header)\n")
    (second / "my_lib-4.5.6.dist-info").mkdir(parents=True)
    (second / "other_lib-7.0.dist-info").mkdir()
    (first / "broken.egg-info").mkdir()  # no PKG-INFO
    monkeypatch.setattr(sys, "path", [str(first), str(second), str(tmp_path / "missing")])
    assert installed_versions() == {"my_lib": "1.2.3", "other_lib": "7.0", "broken": None}


def test_a_cold_import_and_call_does_not_import_importlib_metadata():
    code = "import sys; from pipeline.versions import versions; versions(); print('importlib.metadata' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_library_inside_a_zip_on_the_path_is_asked_of_importlib_metadata(tmp_path, monkeypatch):
    import zipfile

    from pipeline import versions as v

    bundle = tmp_path / "vendored.zip"
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr("joblib-9.9.9.dist-info/METADATA", "Metadata-Version: 2.1\nName: joblib\nVersion: 9.9.9\n\n")
        z.writestr("joblib-9.9.9.dist-info/RECORD", "")
    monkeypatch.setattr(sys, "path", [str(bundle)])
    v._installed.cache_clear()
    try:
        found = v.versions()
    finally:
        v._installed.cache_clear()
    assert found["joblib"] == "9.9.9"  # read from inside the zip, as importlib.metadata reads it
    assert "numpy" not in found  # not on this path
    assert found["python"] == sys.version.split()[0]
