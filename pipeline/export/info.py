"""The JSON an exported model carries, so that ``serve`` can decode images for it as featurize does.

An export (pipeline/export/exporter.py) is a TensorFlow graph or a TFLite flatbuffer; what its graph does
not say (the centre-crop fraction and resize filter of the project's decoder, the head and its
feature spec, library versions) travels beside it as plain JSON, never as code:

* SavedModel: ``assets.extra/tf_feature_pipeline.json`` (the folder TF Serving leaves to its users);
* TFLite: a metadata entry named ``tf_feature_pipeline`` (the flatbuffer's own name -> buffer table).

Both are read without running anything. File-system locations (the training store, the backbone
file) are left out of what is written.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import ModelFileError
from ..jsontext import loads

FORMAT = "tfp-export-1"
NAME = "tf_feature_pipeline"
SAVED_MODEL_FILE = Path("assets.extra") / f"{NAME}.json"
MAX_BYTES = 1 << 20  # a larger metadata entry is not ours

_PATH_KEYS = {"path", "paths", "root", "features"}
_ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")


def without_paths(obj):
    """A copy of `obj` without file-system locations: path-valued keys dropped, absolute paths cut to
    their file name, and leaked training/validation file pairs reduced to their count."""
    if isinstance(obj, dict):
        return {k: (len(v) if k == "leakage" and isinstance(v, list) else without_paths(v))
                for k, v in obj.items() if k not in _PATH_KEYS}
    if isinstance(obj, (list, tuple)):
        return [without_paths(v) for v in obj]
    if isinstance(obj, str) and _ABSOLUTE.match(obj):
        return re.split(r"[\\/]", obj)[-1]
    return obj


def export_info(classifier, bb, fmt: str) -> dict:
    """What an export of `classifier` over its loaded backbone `bb` records about itself."""
    from ..versions import versions

    return {"format": FORMAT, "export_format": fmt, "classes": [str(c) for c in classifier.classes_],
            "preprocess": bb.preprocess.to_dict(), "batch_size": int(bb.batch_size),
            "head": classifier.metrics.get("head"), "feature_spec": without_paths(classifier.spec),
            "metrics": without_paths(classifier.metrics),
            "versions": {"trained_with": classifier.versions, "exported_with": versions()}}


def write_saved_model_info(folder: Path, info: dict) -> None:
    path = Path(folder) / SAVED_MODEL_FILE
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(info, indent=1, sort_keys=True))


def read_saved_model_info(folder: Path) -> dict:
    path = Path(folder) / SAVED_MODEL_FILE
    if not path.is_file():
        raise ModelFileError(f"{folder} is a SavedModel without {SAVED_MODEL_FILE}: not an export of this project "
                             f"(or an older one); export the head again with `python -m pipeline export HEAD "
                             f"--format saved_model --out PATH`")
    if path.stat().st_size > MAX_BYTES:
        raise ModelFileError(f"{path} is larger than {MAX_BYTES} bytes: not an export description of this project")
    return _checked(_parse(path.read_bytes(), str(path)), str(path))


def tflite_with_info(data: bytes, info: dict) -> bytes:
    """The flatbuffer `data` with `info` added as its metadata entry :data:`NAME`."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fb

    model = fb.read_model_from_bytearray(bytearray(data))
    buf = schema.BufferT()
    buf.data = np.frombuffer(json.dumps(info, sort_keys=True).encode(), np.uint8)
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name, entry.buffer = NAME.encode(), len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or [] if m.name.decode() != NAME] + [entry]
    return bytes(fb.convert_object_to_bytearray(model))


def read_tflite_info(path: Path) -> dict:
    """The metadata entry :data:`NAME` of a .tflite file, read from the flatbuffer's tables."""
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    try:
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name().decode("utf-8", "replace") == NAME:
                buf = model.Buffers(entry.Buffer())
                raw = _buffer_bytes(buf, data)
                if len(raw) > MAX_BYTES:
                    break
                return _checked(_parse(raw, str(path)), str(path))
    except ModelFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed flatbuffer is the file's fault
        raise ModelFileError(f"{path} is not a readable TFLite model ({type(e).__name__}: {e})") from e
    raise ModelFileError(f"{path} carries no {NAME!r} metadata: not an export of this project (or an older one); "
                         f"export the head again with `python -m pipeline export HEAD --format tflite --out PATH`")


def _buffer_bytes(buf, data: bytes) -> bytes:
    if buf.DataLength():
        return buf.DataAsNumpy().tobytes()
    offset, size = buf.Offset(), buf.Size()  # large models keep buffers after the flatbuffer
    return data[offset:offset + size] if offset > 1 else b""


def _parse(raw: bytes, where: str) -> dict:
    try:
        info = loads(raw.decode("utf-8"))
    except ValueError as e:  # not UTF-8, not JSON, or nested too deep
        raise ModelFileError(f"{where}: the export description is not JSON ({e})") from None
    if not isinstance(info, dict):
        raise ModelFileError(f"{where}: the export description is not a JSON object")
    return info


def _checked(info: dict, where: str) -> dict:
    from ..preprocess import Preprocess

    if info.get("format") != FORMAT:
        raise ModelFileError(f"{where}: export description format {info.get('format')!r} is not {FORMAT!r}; "
                             f"export the head again with this version")
    classes = info.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ModelFileError(f"{where}: the export description has no list of class names")
    try:
        info["preprocess"] = Preprocess.from_dict(info["preprocess"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{where}: the export description's preprocessing is unusable ({e})") from None
    return info
