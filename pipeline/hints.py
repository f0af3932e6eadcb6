"""What to tell a user about a name or file they gave: close matches for names (backbones, layers,
classes), what a file that cannot be read actually is, and what to do with an image folder given
where a feature store is expected."""
from __future__ import annotations

import difflib
import re


def close_matches(word: str, choices, n: int = 3) -> list[str]:
    """The `n` choices closest to `word` (case-insensitive), best first; [] when none is close."""
    choices = [str(c) for c in choices]
    by_lower = {}
    for c in choices:
        by_lower.setdefault(c.lower(), c)
    found = difflib.get_close_matches(str(word).lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[f] for f in found]


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'dogs'?)', or '' when nothing is close: to append to an error message."""
    found = close_matches(word, choices, n=1)
    return f" (did you mean {found[0]!r}?)" if found else ""


# how the files joblib writes begin: a pickle (protocol 2+), or one of its compressors
_JOBLIB_MAGIC = (b"\x80", b"x", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"]\x00\x00", b"\x04\x22\x4d\x18")


def looks_like_pickle(path) -> bool:
    """True when the file starts like a (possibly compressed) joblib/pickle stream."""
    try:
        with open(path, "rb") as f:
            return f.read(8).startswith(_JOBLIB_MAGIC)
    except OSError:
        return False


def unreadable_model(path, error: Exception | None) -> str:
    """Why a model file did not load, from what the file is (not a guess): empty, text, cut short, foreign."""
    try:
        head = open(path, "rb").read(512)
    except OSError as e:
        return f"{path} cannot be read ({e.strerror or e})"
    fix = "pass the .head.npz file that `python -m pipeline train --out` wrote"
    if not head:
        return f"{path} is empty, not a model file; {fix}"
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8").strip().splitlines()
        except UnicodeDecodeError:
            text = None
        if text is not None:
            begins = f"it begins {text[0][:40]!r}" if text else "only blank lines"
            return f"{path} is a text file, not a model file ({begins}); {fix}"
    if not head.startswith(_JOBLIB_MAGIC):
        return f"{path} is not a joblib/pickle file (it begins {head[:8]!r}); {fix}"
    reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else 'no details'}" \
        if error is not None else "unreadable"
    if isinstance(error, EOFError) or "EOF" in str(error):
        return f"{path} is a joblib file cut short ({reason}): it is incomplete; retrain the head or restore the file"
    return f"{path} is a joblib file this tool cannot read ({reason}); retrain the head or restore the file"


_FLAG = re.compile(r"--[a-z][a-z0-9-]*")


def _alternatives(advice: str) -> list[str]:
    """'a (b, c), d, or e' -> ['a (b, c)', 'd', 'e']: the parts separated by ', ' or ', or ' outside brackets."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(advice):
        ch = advice[i]
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and advice.startswith(", ", i):
            parts.append(advice[start:i])
            i += 2
            if advice.startswith("or ", i):
                i += 3
            start = i
            continue
        i += 1
    return parts + [advice[start:]]


def only_flags(hint: str, flags, renames: dict | None = None) -> str:
    """`hint` ('what limits the run: advice, or other advice') keeping only the advice whose flags are in
    `flags` (a command's own), each flag first renamed by `renames` (e.g. score's store is --cache, not
    --out); what is left of the advice is dropped entirely when no part of it applies."""
    head, sep, advice = hint.partition(": ")
    if not sep:
        return hint
    renames, flags = renames or {}, set(flags)
    kept = []
    for part in _alternatives(advice):
        part = _FLAG.sub(lambda m: renames.get(m.group(0), m.group(0)), part)
        if all(f in flags for f in _FLAG.findall(part)):
            kept.append(part)
    if not kept:
        return head
    if advice.startswith("try ") and not kept[0].startswith("try "):
        kept[0] = "try " + kept[0]
    return f"{head}: " + (kept[0] if len(kept) == 1 else ", ".join(kept[:-1]) + ", or " + kept[-1])


def _brief(spec) -> str:
    """'mobilenet_v2_quant, layer penultimate, 224x224 raw': a spec in a few words (no tensor names, no hashes)."""
    if spec.is_imported:
        return spec.describe()
    pre = spec.preprocess or {}
    size = "x".join(str(v) for v in pre.get("size") or [])
    words = [_short_name(spec.backbone), f"layer {spec.layer or '?'}",
             " ".join(w for w in (size, pre.get("scaling") or "") if w) or None,
             f"crop {pre['crop_fraction']:g}" if pre.get("crop_fraction") not in (None, 1.0) else None,
             f"weights {_short_name(spec.weights)}" if spec.weights not in (None, "imagenet") else None,
             spec.precision if spec.precision != "float32" else None, f"tta {spec.tta}" if spec.tta else None,
             f"decoded on the GPU by {spec.decoder}" if spec.decoder != "pillow" else None]
    return ", ".join(w for w in words if w)


def _short_name(name) -> str:
    name = str(name or "?")
    return name.rsplit("/", 1)[-1] if "/" in name and not name.startswith("hub:") else name


def featurize_command(spec, data_dir=None, preprocess: bool = False) -> str:
    """The command that featurizes `data_dir` into features with `spec` (a FeatureSpec); `preprocess`: also
    spell out its preprocessing (where the backbone's own would differ from it)."""
    pre = spec.preprocess or {}
    flags = [f"--backbone {spec.backbone}", f"--layer {spec.layer}"]
    if spec.weights not in (None, "imagenet"):
        flags.append(f"--weights {spec.weights}")
    size = pre.get("size") or []
    if preprocess and len(size) == 2 and size[0] == size[1]:
        flags.append(f"--input-size {size[0]}")
    if preprocess and pre.get("scaling"):
        flags.append(f"--scaling {pre['scaling']}")
    if preprocess and pre.get("crop_fraction") is not None:
        flags.append(f"--crop-fraction {pre['crop_fraction']:g}")
    if spec.precision != "float32":
        flags.append(f"--precision {spec.precision}")
    if spec.tta:
        flags.append(f"--tta {spec.tta}")
    if spec.decoder != "pillow":
        flags.append("--keras-backend jax --decode gpu")
    return f"python -m pipeline featurize {data_dir or 'DATA_DIR'} {' '.join(flags)}"


def spec_mismatch(head, found, where: str, diff: list[str], data_dir=None) -> tuple[str, str]:
    """(one line: what the head expects, what `where` holds, the command that featurizes the folder for
    this head; the two full specs, for -v) of features with spec `found` given to a head of spec `head`."""
    named = [k for k in diff if k not in ("tensor", "dim")] or diff  # a layer's tensor and D follow from it
    line = f"this head expects features of {_brief(head)}; {where} holds {_brief(found)} (different {', '.join(named)})"
    if head.is_imported:
        line += "; give it features imported the same way"
    else:
        line += f"; featurize the folder for this head: `{featurize_command(head, data_dir, 'preprocess' in diff)}`"
    details = f"the head's features: {head.describe()}\n{where}: {found.describe()}"
    return line + " (-v: both in full)", details
