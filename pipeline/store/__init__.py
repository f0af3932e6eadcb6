"""The feature store: one directory per featurization. The only module that touches bcolz.

Layout of a store directory::

    meta.json            backbone spec (name, source, layer, tensor, preprocessing, D), versions,
                         the committed segments with a sha256 per file, the name of the rows file
    segments/*.bcolz     immutable N x D float32 bcolz carrays, one per finished run
    parts/<row>.bcolz    one immutable carray per batch of a run in progress (or killed)
    rows.jsonl           one JSON object per committed row: path (relative, forward slashes),
                         label, sha256, stat, its own index ``i`` and a checksum ``crc`` of the
                         line; row i of the log is row i of segments + parts. A row with
                         ``removed`` (and a zero feature row) withdraws its path's earlier row
                         (an import writes one line per batch, its rows as columns: a block)
    parts/<row>.bcolz.json  the sha256 of every file of that part, written before the rename
    report.json          what the last run skipped (path, reason), ignored, found duplicated
    .lock                held (flock) while a run writes

No bcolz file is ever written in place. A batch is written to a staging folder, flushed and
fsynced, then renamed to ``parts/<first row>.bcolz``; only then are its lines appended to
rows.jsonl (fsynced): that append is the commit. At the end of a run its parts are merged
into a new segment the same way (staging, fsync, rename), and meta.json (written atomically)
starts to list it. A run killed at any moment leaves committed rows readable, and the next
writer removes staging folders, uncommitted parts and parts already merged.

Rows are tied to their features by construction: every line carries its index and a checksum,
so a lost, extra, reordered or edited line is refused naming the line (logs written before
these fields existed are read as they are); segments and parts are checksummed before bcolz
reads them; meta.json counts the rows its segments hold, so a log cut short is refused too.
"""
from __future__ import annotations

from ..versions import versions  # noqa: F401 (kept here for old imports)
from .log import live_indices
from .pieces import chunklen_for
from .reader import FORMAT, FeatureStore, read_report, verify, write_report
from .opening import open_writer
from .writer import StoreWriter

__all__ = ["FORMAT", "FeatureStore", "StoreWriter", "chunklen_for", "live_indices", "open_writer", "read_report",
           "verify", "versions", "write_report"]
