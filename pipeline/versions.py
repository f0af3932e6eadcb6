"""The versions of Python and the libraries recorded in every artifact (stores, heads, exports).

They are read from the packages' metadata folders on sys.path, as importlib.metadata would find them,
without importing importlib.metadata (it brings email, zipfile and csv: ~50 ms of every cold
featurize): a wheel's ``NAME-VERSION.dist-info`` folder carries the version in its name, an
``.egg-info`` (a source checkout installed in place) in the ``Version:`` header of its PKG-INFO.
"""
from __future__ import annotations

import functools
import os
import sys

DISTRIBUTIONS = ("tensorflow", "keras", "ai-edge-litert", "numpy", "scikit-learn", "bcolz-zipline", "joblib",
                 "pillow", "tf-feature-pipeline")


def versions() -> dict:
    """Library versions recorded in every artifact (a new dict each call: callers may add to it); a library
    that is not installed is left out (a TFLite-only machine has no tensorflow)."""
    return dict(_installed())


@functools.cache
def _installed() -> dict:
    out = {"python": sys.version.split()[0]}  # platform.python_version() (3.13.0rc1...), without importing platform
    found, opaque = installed_versions(), _opaque_entries()
    for dist in DISTRIBUTIONS:
        version = found.get(normalized(dist))
        if version is None and opaque:  # perhaps inside a zip or an .egg: importlib.metadata reads those
            version = _from_metadata(dist)
        if version:
            out[dist] = version
    return out


def _opaque_entries() -> bool:
    """Whether sys.path holds places whose packages the folder scan cannot see: zip files (a zipapp, a zipped
    egg) or .egg folders (their metadata sits in EGG-INFO/)."""
    return any(entry.endswith(".egg") or os.path.isfile(entry) for entry in sys.path if entry)


def _from_metadata(dist: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def normalized(dist: str) -> str:
    """A distribution's name as its metadata folder spells it (``scikit-learn`` -> ``scikit_learn``)."""
    return dist.replace("-", "_").replace(".", "_").lower()


def installed_versions() -> dict:
    """{normalized name: version} of every distribution on sys.path, the first of each name winning (as
    importlib.metadata picks); None where an .egg-info has no readable version."""
    found: dict = {}
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info"):
                stem, dash, version = name[:-len(".dist-info")].rpartition("-")
                if dash and stem and normalized(stem) not in found:
                    found[normalized(stem)] = version
            elif name.endswith(".egg-info"):
                stem = name[:-len(".egg-info")].split("-")[0]  # NAME.egg-info, or NAME-VERSION-pyX.Y.egg-info
                if normalized(stem) not in found:
                    found[normalized(stem)] = _pkg_info_version(os.path.join(entry or ".", name))
    return found


def _pkg_info_version(egg_info: str) -> str | None:
    """The ``Version:`` header of an .egg-info folder's PKG-INFO (or of an .egg-info file itself)."""
    path = os.path.join(egg_info, "PKG-INFO") if os.path.isdir(egg_info) else egg_info
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    return None  # the headers end at the first blank line
                if line.startswith("Version:"):
                    return line[len("Version:"):].strip() or None
    except OSError:
        pass
    return None
