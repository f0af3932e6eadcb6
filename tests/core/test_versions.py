"""versions(): what every artifact records about the libraries, read without importing importlib.metadata."""
from __future__ import annotations

import importlib.metadata as md
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
    assert v["python"] == "%d.%d.%d" % sys.version_info[:3]
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
