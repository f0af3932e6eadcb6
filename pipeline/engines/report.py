"""What a featurize run did (:class:`RunReport`, written to the store's ``report.json``), whichever engine ran it.

:func:`new_run` starts one from a listing; the engines fill it in as they book each file
(:func:`pipeline.engines.base.account`) and :func:`pipeline.engines.base.commit_run` completes it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..featurizer.stages import line as stages_line
from ..hints import only_flags
from ..store import FeatureStore


@dataclass
class RunReport:
    """What a featurize run did; written to ``report.json`` in the store."""

    store: FeatureStore | None
    discovered: int = 0
    computed: int = 0
    reused: int = 0  # rows kept as they were, and rows copied (below)
    copied: list = field(default_factory=list)  # (row, source path): same content, new label or path
    taken: list = field(default_factory=list)  # (row, k): content held by the k-th --reuse-from store
    sources: list = field(default_factory=list)  # the --reuse-from stores (pipeline.store.copies.Source)
    pruned: int = 0
    skipped: list[dict] = field(default_factory=list)  # {path, reason, detail}
    notes: list[dict] = field(default_factory=list)  # {path, note}: used, with a remark (e.g. EXIF ignored)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not images, hidden...
    links: dict[str, str] = field(default_factory=dict)  # symlinks met: path (folders end in /) -> target
    listed: list[str] = field(default_factory=list)  # relative paths of the images this run was given
    unlabelled: list[str] = field(default_factory=list)  # images a labels CSV has no row for
    unused_label_ids: list[str] = field(default_factory=list)
    not_in_folder: list[str] = field(default_factory=list)  # rows kept of files no longer listed (no prune)
    duplicates: list[list[str]] = field(default_factory=list)
    label_conflicts: list[dict] = field(default_factory=list)
    complete: bool = False
    stores: list = field(default_factory=list)  # one per layer (several with --layer a,b)
    stages: dict = field(default_factory=dict)  # busy seconds per stage and the bottleneck (stages.py)

    def to_dict(self) -> dict:
        return {"complete": self.complete, "discovered": self.discovered, "featurized": self.computed,
                "reused": self.reused, "copied": len(self.copied), "taken": len(self.taken), "pruned": self.pruned, "skipped": self.skipped, "notes": self.notes,
                "ignored": [{"path": p, "reason": r} for p, r in self.ignored],
                "links": [{"path": p, "target": t} for p, t in self.links.items()],
                "unlabelled": self.unlabelled, "labels_without_image": len(self.unused_label_ids),
                "unused_label_ids": self.unused_label_ids[:1000], "not_in_folder": len(self.not_in_folder),
                "not_in_folder_paths": self.not_in_folder[:1000], "duplicates": self.duplicates,
                "label_conflicts": self.label_conflicts, "stages": self.stages}

    def summary(self, flags=None, renames: dict | None = None, list_skipped: bool = True) -> str:
        """What the CLI prints. `flags`: those of the command printing it (its hints name no other; `renames`
        maps a flag to the command's own, e.g. score's --cache for --out); `list_skipped`: a line per skipped
        file (False where the caller names them itself)."""
        n = f"{len(self.store)} rows, D={self.store.spec['dim']}" if self.store is not None else "not written"
        lines = [f"{self.discovered} images: {self.computed} featurized, {self.reused} reused from the cache, "
                 f"{len(self.skipped)} skipped -> {self.store.root if self.store is not None else '?'} ({n})"]
        lines += [f"  also -> {s.root} (layer {s.spec['layer']}, D={s.spec['dim']})" for s in self.stores[1:]]
        lines += [f"  skipped {s['path']}: {s['reason']} {s.get('detail', '')}".rstrip()
                  for s in (self.skipped if list_skipped else [])]
        lines += [f"  note {n['path']}: {n['note']}" for n in self.notes]
        if self.copied:
            row, source = self.copied[0]
            example = (f"{row['path']} relabelled {row['label']!r}" if source == row["path"]
                       else f"{row['path']} as {source}")
            lines.append(f"  {len(self.copied)} rows took the features of the same image already in the store (a new "
                         f"label, or a moved or copied file; e.g. {example}): not featurized again")
        if self.taken:
            roots = sorted({str(self.sources[k].root) for _, k in self.taken}) if self.sources else []
            lines.append(f"  {len(self.taken)} rows took the features of the same image in {', '.join(roots)} "
                         f"(--reuse-from): not featurized again")
        if self.pruned:
            lines.append(f"  pruned {self.pruned} rows of files no longer in the folder")
        if self.not_in_folder and flags is not None and "--prune" not in flags:  # score: its cache, not a store
            lines.append(f"  {len(self.not_in_folder)} rows of the store are of files no longer in the folder "
                         f"(e.g. {self.not_in_folder[0]}): left out of this run's output")
        elif self.not_in_folder:
            lines.append(f"  {len(self.not_in_folder)} rows are of files no longer in the folder (e.g. "
                         f"{self.not_in_folder[0]}): kept in the store, so train still uses them; "
                         f"featurize --prune drops them")
        counts = Counter(reason for _, reason in self.ignored)
        if counts:
            lines.append("  ignored (not images to featurize): " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        if self.links:
            lines.append(f"  {len(self.links)} symlinks met (their targets are in report.json 'links')")
        if self.unlabelled:
            lines.append(f"  {len(self.unlabelled)} images have no label in the CSV (featurized, not used for "
                         f"training): {', '.join(self.unlabelled[:5])}{' ...' if len(self.unlabelled) > 5 else ''}")
        if self.unused_label_ids:
            lines.append(f"  {len(self.unused_label_ids)} labels in the CSV match no image")
        if self.duplicates:
            lines.append(f"  {len(self.duplicates)} groups of identical images, e.g. {', '.join(self.duplicates[0])}")
        for c in self.label_conflicts:
            lines.append(f"  label_conflict: {', '.join(c['paths'])} are the same image labelled "
                         f"{' and '.join(c['labels'])} (left out of training)")
        if self.stages:
            stages = self.stages
            if flags is not None and stages.get("hint"):
                stages = {**stages, "hint": only_flags(stages["hint"], flags, renames)}
            lines.append(stages_line(stages))
        return "\n".join(lines)


def new_run(listing) -> RunReport:
    """The report of a run about to featurize `listing`: what was found, before any image is read."""
    return RunReport(store=None, discovered=len(listing.records) + len(listing.unusable) - len(listing.unreadable),
                     ignored=listing.ignored, links=listing.links, skipped=list(listing.unusable),
                     listed=[r.relpath for r in listing.records], unlabelled=listing.unlabelled,
                     unused_label_ids=listing.unused_label_ids)
