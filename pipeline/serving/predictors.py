"""What ``serve`` runs: decoded uint8 pixels -> class probabilities, from a head file or an export.

A predictor has ``classes`` (column names), ``preprocess`` (how :mod:`pipeline.decode.inputs` decodes a
request's images for it, exactly as featurize would), ``batch_size``, ``predict_pixels(pixels)``
((N, h, w, 3) uint8 -> (N, n_classes) float, columns in ``classes`` order, then any columns of its own) and
``describe()`` (what ``GET /model`` shows); optionally ``answer_fields(row)``: the fields of an answer beyond
the prediction and probabilities, from one row of ``predict_pixels`` (a head's ``ood_distance`` and ``ood``). :func:`load_predictor` picks one by what the path is:

* :class:`HeadPredictor`: a ``.head.npz`` head (:class:`~pipeline.heads.classifier.Classifier`) over its
  own backbone;
* :class:`SavedModelPredictor`: a SavedModel folder written by ``python -m pipeline export``, run
  through its ``serving_default`` signature after ``tf.saved_model.load``;
* :class:`TFLitePredictor`: a ``.tflite`` file written by ``export --format tflite``.

An export is loaded without pickle and without Python code from the file, but a SavedModel is a
TensorFlow graph whose ops run on every request: graphs holding ops that reach the file system or
call back into Python (:data:`REFUSED_OPS`) are refused before loading. A TFLite file runs with
the built-in operators only (custom operators do not resolve).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import ModelFileError, UsageError
from ..export.info import read_saved_model_info, read_tflite_info, without_paths
from ..heads.ood import MISSING, check_reject_ood

log = logging.getLogger(__name__)
REJECTED = "unknown"  # the prediction of a flagged image under reject_ood, as score writes it

# ops that read, write or list files, or run Python, when a graph is executed; no export of this project has them
REFUSED_OPS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "PyFunc", "PyFuncStateless", "EagerPyFunc", "PrintV2",
    "ImmutableConst", "WholeFileReader", "WholeFileReaderV2", "TFRecordDataset", "TFRecordDatasetV2",
    "TextLineDataset", "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2", "DatasetToTFRecord",
    "ExperimentalDatasetToTFRecord", "SaveDataset", "SaveDatasetV2", "LoadDataset", "Save", "SaveSlices",
    "InitializeTableFromTextFile", "InitializeTableFromTextFileV2", "DebugIdentityV2", "DebugIdentityV3",
    "FileSystemSetConfiguration",
    # event files, old-style readers, datasets over files, databases or the network, debug dumps, proto
    # descriptors read from a path: no export holds them either
    "CreateSummaryFileWriter", "CreateSummaryDbWriter", "ImportEvent", "WriteSummary", "WriteRawProtoSummary",
    "WriteScalarSummary", "WriteImageSummary", "WriteAudioSummary", "WriteHistogramSummary", "WriteGraphSummary",
    "TextLineReader", "TextLineReaderV2", "TFRecordReader", "TFRecordReaderV2", "FixedLengthRecordReader",
    "FixedLengthRecordReaderV2", "IdentityReader", "IdentityReaderV2", "LMDBReader", "ReaderRead", "ReaderReadV2",
    "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset", "SqlDataset", "ExperimentalSqlDataset", "LMDBDataset",
    "ExperimentalLMDBDataset", "SnapshotDataset", "SnapshotDatasetV2", "SnapshotDatasetReader",
    "SnapshotChunkDataset", "SnapshotNestedDatasetReader", "ListSnapshotChunksDataset", "DataServiceDataset",
    "DataServiceDatasetV2", "DataServiceDatasetV3", "DataServiceDatasetV4", "RegisterDataset", "RegisterDatasetV2",
    "DistributedSave", "MatchingFilesDataset", "ExperimentalMatchingFilesDataset", "CacheDataset", "CacheDatasetV2",
    "LoadAndRemapMatrix", "GenerateVocabRemapping", "DebugIdentity", "DebugNanCount", "DebugNumericSummary",
    "DecodeProtoV2", "EncodeProto"})
# ops that read or write checkpoint files at a path the graph chooses: in an export, only the saver's own
# functions (run by save and restore, never by a signature) hold them
CHECKPOINT_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "RestoreSlice", "Restore"})


def load_predictor(path, trusted: bool = False, reject_ood: bool = False):
    """The predictor for `path`: an exported SavedModel folder, an exported .tflite, else a head file.
    `reject_ood`: answer ``unknown`` for the images a head flags out-of-distribution (head files only)."""
    path = Path(path)
    if reject_ood and (path.is_dir() or (path.is_file() and _is_tflite(path))):
        raise UsageError(f"{path} is an export: exports carry no out-of-distribution summary, so reject_ood cannot "
                         f"apply; serve the head file (.head.npz) instead")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelFileError(f"{path} is a folder but not a SavedModel (no saved_model.pb); serve a head file "
                                 f"(.head.npz) or a model written by `python -m pipeline export`")
        return SavedModelPredictor(path)
    if path.is_file() and _is_tflite(path):
        return TFLitePredictor(path)
    from ..heads.classifier import load

    return HeadPredictor(load(path, trusted=trusted), reject_ood)


def _is_tflite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8)[4:8] == b"TFL3"


class HeadPredictor:
    """A :class:`~pipeline.heads.classifier.Classifier`: its backbone (loaded now), then the head; with the
    head's out-of-distribution summary (pipeline/heads/ood.py), each answer also has ``ood_distance`` and
    ``ood`` (1 flagged, 0 not), and `reject_ood` answers ``unknown`` for the flagged images."""

    def __init__(self, classifier, reject_ood: bool = False):
        self.classifier, self.ood, self.reject_ood = classifier, classifier.ood_summary, reject_ood
        if reject_ood:
            check_reject_ood(self.ood, classifier.classes_, REJECTED)
        if self.ood is None:
            log.warning("%r %s (answers have no ood_distance/ood fields)", classifier, MISSING)
        bb = classifier.backbone  # builds and loads the network now, not on the first request
        self.preprocess, self.batch_size = bb.preprocess, bb.batch_size
        self.classes = [str(c) for c in classifier.classes_]

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities, then (with an OOD summary) the OOD distance and flag: (N, n_classes [+ 2])."""
        X = self.classifier.pixel_features(pixels)
        proba = self.classifier.predict_proba(X)
        return proba if self.ood is None else np.column_stack([proba, *self.ood.score(X)])

    def answer_fields(self, row) -> dict:
        """``ood_distance`` and ``ood`` of one row of predict_pixels (and ``unknown`` as the prediction of a
        flagged image under reject_ood); nothing for a head without an OOD summary."""
        if self.ood is None:
            return {}
        k = len(self.classes)
        flagged = bool(row[k + 1])
        return {"ood_distance": float(row[k]), "ood": int(flagged),
                **({"prediction": REJECTED} if self.reject_ood and flagged else {})}

    def describe(self) -> dict:
        clf = self.classifier
        return {"head": clf.metrics.get("head"), "feature_spec": without_paths(clf.spec),
                "metrics": without_paths(clf.metrics), "trained_with": clf.versions,
                "ood": None if self.ood is None else {**self.ood.header(), "reject_ood": self.reject_ood}}

    def __repr__(self):
        return repr(self.classifier)


class _Exported:
    """What both export formats share: the description written beside the graph, and checks on it."""

    def __init__(self, path: Path, info: dict, fmt: str):
        self.path, self.info, self.format = path, info, fmt
        self.preprocess = info["preprocess"]
        self.classes = list(info["classes"])

    def describe(self) -> dict:
        info = self.info
        return {"head": info.get("head"), "feature_spec": info.get("feature_spec") or {},
                "metrics": info.get("metrics") or {}, "trained_with": info.get("versions", {}).get("trained_with"),
                "export": {"format": self.format, "exported_with": info.get("versions", {}).get("exported_with")}}

    def _check_outputs(self, classes, input_shape) -> None:
        """The graph's own class names and input size must be the ones its description gives."""
        if [str(c) for c in classes] != self.classes:
            raise ModelFileError(f"{self.path}: the model's classes {list(classes)} differ from its description's "
                                 f"{self.classes}; export the head again")
        if tuple(input_shape) != tuple(self.preprocess.size):
            raise ModelFileError(f"{self.path}: the model takes {tuple(input_shape)} images but its description "
                                 f"says {tuple(self.preprocess.size)}; export the head again")

    def __repr__(self):
        return (f"<exported {self.format} {self.info.get('head')} classes={self.classes} on "
                f"{self.info.get('feature_spec', {}).get('backbone')}>")


class SavedModelPredictor(_Exported):
    """An exported SavedModel, run through ``serving_default`` (uint8 (N, H, W, 3) -> probabilities)."""

    def __init__(self, path: Path):
        super().__init__(Path(path), read_saved_model_info(path), "saved_model")
        check_saved_model_ops(self.path)
        import tensorflow as tf

        try:
            self._fn = tf.saved_model.load(str(self.path)).signatures["serving_default"]
        except (KeyError, OSError, ValueError, tf.errors.OpError) as e:
            raise ModelFileError(f"{self.path} cannot be loaded as a SavedModel with serving_default: {e}") from e
        self.batch_size = int(self.info.get("batch_size") or 32)
        spec = self._fn.structured_input_signature[1].get("images")
        if spec is None or spec.dtype != tf.uint8 or len(spec.shape) != 4:
            raise ModelFileError(f"{self.path}: serving_default does not take uint8 'images' (N, H, W, 3)")
        out = self._fn(images=tf.zeros([1, *self.preprocess.size, 3], tf.uint8))  # also the warm-up
        self._check_outputs([c.decode() for c in out["classes"].numpy()[0]], spec.shape[1:3])

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        out = [self._fn(images=tf.constant(pixels[i:i + self.batch_size]))["probabilities"].numpy()
               for i in range(0, len(pixels), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


def check_saved_model_ops(folder: Path) -> None:
    """Refuse a SavedModel whose graph holds one of :data:`REFUSED_OPS`, or whose signatures (and the init op
    that runs at load) reach one of :data:`CHECKPOINT_OPS`, before loading it."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString((Path(folder) / "saved_model.pb").read_bytes())
    except Exception as e:  # noqa: BLE001 - a malformed protobuf
        raise ModelFileError(f"{folder}/saved_model.pb cannot be parsed: {e}") from None
    found = set()
    for mg in sm.meta_graphs:
        found.update(n.op for n in mg.graph_def.node if n.op in REFUSED_OPS)
        for fn in mg.graph_def.library.function:  # every function: a name proves nothing (any can be chosen)
            found.update(n.op for n in fn.node_def if n.op in REFUSED_OPS)
        found.update(_signature_ops(mg) & CHECKPOINT_OPS)
    if found:
        raise ModelFileError(f"{folder}: the SavedModel's graph holds {', '.join(sorted(found))}, ops that reach the "
                             f"file system or Python when run; it is not served (exports of this project hold none)")


def _signature_ops(mg) -> set[str]:
    """The ops a MetaGraph's signatures run: the nodes their tensors come from and every function these
    call, transitively (the saver's functions, called only by save and restore, are not among them)."""
    nodes = {n.name: n for n in mg.graph_def.node}
    fns = {f.signature.name: f for f in mg.graph_def.library.function}
    todo = [t.name for sig in mg.signature_def.values() for t in (*sig.inputs.values(), *sig.outputs.values())]
    seen_nodes, seen_fns, ops = set(), set(), set()
    while todo:
        name = todo.pop().lstrip("^").split(":")[0]
        if name in seen_nodes or name not in nodes:
            continue
        seen_nodes.add(name)
        node = nodes[name]
        ops.add(node.op)
        todo += list(node.input)
        calls = _called(node)
        while calls:
            f = calls.pop()
            if f in fns and f not in seen_fns:
                seen_fns.add(f)
                for inner in fns[f].node_def:
                    ops.add(inner.op)
                    calls += _called(inner)
    return ops


def _called(node) -> list[str]:
    """Names of the functions a node calls (PartitionedCall's f, If/While branches, any func attribute)."""
    names = []
    for attr in node.attr.values():
        if attr.HasField("func"):
            names.append(attr.func.name)
        names += [f.name for f in attr.list.func]
    return names


class TFLitePredictor(_Exported):
    """An exported ``.tflite`` file, run image by image through its ``serving_default`` signature."""

    def __init__(self, path: Path):
        super().__init__(Path(path), read_tflite_info(path), "tflite")
        from ..backbones.tflite import interpreter_class
        from ..logs import native_output_quieted

        Interpreter, _ = interpreter_class()
        try:
            with native_output_quieted():  # XNNPACK's notice when tensors are allocated (shown with -v)
                it = Interpreter(model_path=str(self.path), num_threads=os.cpu_count() or 1)
                it.allocate_tensors()
            self._run = it.get_signature_runner("serving_default")
        except (ValueError, RuntimeError) as e:
            raise ModelFileError(f"{self.path} is not a usable TFLite model: {e}") from e
        shape = it.get_input_details()[0]["shape"]
        self.batch_size = int(self.info.get("batch_size") or 32)
        out = self._run(images=np.zeros((1, *self.preprocess.size, 3), np.uint8))  # also the warm-up
        self._check_outputs([c.decode() for c in out["classes"][0]], shape[1:3])

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        out = [self._run(images=p[None])["probabilities"] for p in pixels]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)
