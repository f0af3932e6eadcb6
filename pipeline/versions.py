"""The versions of Python and the libraries recorded in every artifact (stores, heads, exports)."""
from __future__ import annotations

import platform


def versions() -> dict:
    """Library versions recorded in every artifact."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("tensorflow", "keras", "ai-edge-litert", "numpy", "scikit-learn", "bcolz-zipline",
                 "joblib", "pillow", "tf-feature-pipeline"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out
