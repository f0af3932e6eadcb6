"""Head files that hold data, not code: ``NAME.head.npz`` (format tf-feature-pipeline/head-2).

One uncompressed ``np.savez`` archive: the head's arrays (see pipeline/heads/arrayhead.py) and
``header``, a 0-d unicode array holding JSON: format, classes, spec (the feature spec), metrics,
params (the FeatureHead's parameters; absent from older files), versions, train_hashes, head
(scorer, probabilities, the name/dtype/shape of every array) and sha256 (of the arrays and of the
rest of the header). Reading uses ``np.load(allow_pickle=False)``
after checking every member's declared size against the file, so a file can fail to load but can
never run code or allocate more than it holds; a file that does not parse or whose checksum
does not match is refused with its reason.

The older joblib heads (tf-feature-pipeline/head-1) are pickles: loading one can run any code it
contains, so they load only with ``trusted=True`` (CLI ``--trust-pickle``); ``python -m pipeline
convert OLD.joblib --out NEW.head.npz --trust-pickle`` rewrites one in this format.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from ..jsontext import loads
from ..outputs import atomic_open
from .arrayhead import ArrayHead

FORMAT = "tf-feature-pipeline/head-2"
LEGACY_FORMAT = "tf-feature-pipeline/head-1"
EXTENSION = ".head.npz"
_ZIP_MAGIC = b"PK\x03\x04"


def digest(arrays: dict, header: dict) -> str:
    """sha256 over every array (name, dtype, shape, bytes, in name order) and the header without 'sha256'."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    rest = {k: v for k, v in header.items() if k != "sha256"}
    h.update(json.dumps(rest, sort_keys=True, default=_jsonable).encode())
    return h.hexdigest()


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} cannot be written to a head file's header")


def write(path, head: ArrayHead, header: dict) -> Path:
    """Write `head` and `header` (classes, spec, metrics, ...) atomically: temp file, fsync, rename."""
    path = Path(path)
    header = {**json.loads(json.dumps(header, default=_jsonable)), "format": FORMAT,
              "classes": [str(c) for c in head.classes_],
              "head": {"scorer": head.scorer, "probabilities": head.probabilities,
                       "arrays": {k: [v.dtype.str, list(v.shape)] for k, v in sorted(head.arrays.items())}}}
    header["sha256"] = digest(head.arrays, header)
    with atomic_open(path, "wb") as f:  # a new O_EXCL temp file, fsynced and renamed: never a planted link
        np.savez(f, header=np.array(json.dumps(header)), **head.arrays)
    return path


def is_head_file(path) -> bool:
    """True when `path` starts like a zip archive (head-2); a joblib head-1 file is a pickle stream."""
    with open(path, "rb") as f:
        return f.read(4) == _ZIP_MAGIC


def read(path) -> tuple[dict, ArrayHead]:
    """(header, head) of a head-2 file; ModelFileError naming the file and the reason otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
        _check_members(data)
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ModelFileError as e:
        raise ModelFileError(f"{path} is not a valid head file: {e}") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ModelFileError(f"{path} is a head file cut short or damaged ({type(e).__name__}: {e}); "
                             f"retrain the head or restore the file") from None
    try:
        header = loads(str(arrays.pop("header")[()]))  # nested too deep: a ValueError too
    except (KeyError, ValueError, TypeError) as e:
        raise ModelFileError(f"{path} has no readable JSON header ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise ModelFileError(f"{path} is format {found!r}, this version reads {FORMAT!r}")
    if header.get("sha256") != digest(arrays, header):
        raise ModelFileError(f"{path} fails its checksum: the arrays or the header were changed or damaged "
                             f"after it was saved; retrain or restore it")
    try:
        h = header["head"]
        head = ArrayHead(header["classes"], arrays, h["scorer"], h["probabilities"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path} holds an inconsistent head ({type(e).__name__}: {e})") from None
    return header, head


def _check_members(data: bytes) -> None:
    """Every member a plain .npy of numbers (or the header) whose declared size fits in the file."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(data):
                raise ModelFileError(f"member {info.filename!r} is compressed or larger than the file")
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ModelFileError(f"member {info.filename!r} is .npy version {version}, not 1.0 or 2.0")
                shape, _, dtype = read_header(f, max_header_size=10_000)
            if dtype.kind not in "fiuU" or dtype.hasobject:
                raise ModelFileError(f"member {info.filename!r} has dtype {dtype}, not numbers")
            if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > info.file_size:
                raise ModelFileError(f"member {info.filename!r} declares more data than it holds")


def read_pickle(path, trusted: bool) -> dict:
    """The payload dict of a joblib head-1 file, unpickled only when `trusted`."""
    from ..versions import versions

    path = Path(path)
    if not trusted:
        raise ModelFileError(
            f"{path} is not a {FORMAT} file; it looks like an older pickle-based head ({LEGACY_FORMAT}, joblib), "
            f"and loading a pickle can run any code it contains. If you trust where this file came from, "
            f"convert it once: python -m pipeline convert {path} --out NEW{EXTENSION} --trust-pickle "
            f"(or pass --trust-pickle / load(path, trusted=True))")
    import warnings

    import joblib
    from sklearn.exceptions import InconsistentVersionWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", InconsistentVersionWarning)
            payload = joblib.load(path)
    except InconsistentVersionWarning as w:
        raise ModelFileError(f"{path} was saved with scikit-learn {w.original_sklearn_version}, this is "
                             f"{w.current_sklearn_version}; retrain the head from its features") from None
    except Exception as e:
        raise ModelFileError(f"{path} is not a readable model file ({type(e).__name__}: {e}); "
                             f"it may be truncated: retrain or restore it") from e
    if not isinstance(payload, dict) or payload.get("format") != LEGACY_FORMAT:
        raise ModelFileError(f"{path} is not a tf-feature-pipeline head (format {LEGACY_FORMAT} expected)")
    payload.setdefault("versions", versions())
    return payload


LEGACY_CALIBRATION = ("per-class sigmoids (converted from a head-1 file; on tiny data these can contradict the "
                      "SVM's decisions: retrain for temperature scaling)")
