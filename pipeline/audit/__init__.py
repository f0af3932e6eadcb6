"""Is my data clean? Near-duplicates, train/test leaks, label issues and outliers, from the stored features.

    from pipeline.audit import audit, near_duplicates, leaks, label_issues, outliers
    result = audit("features/train", "features/test")   # an AuditResult
    result.findings        # [Finding(kind, path, score, other_path, label, other_label, group, store)]
    result.accuracy        # the head's accuracy on test with and without the leaked images
    near_duplicates("features/train")                     # [Finding], each pair once

Every function returns plain lists of :class:`Finding` (``as_dicts`` turns them into dicts with
the CSV's columns). Details: docs/audit.md.
"""
from .run import CHECKS, AuditResult, accuracy_with_and_without, audit
from .checks import NEAR_DUPLICATE, Search, leaks, near_duplicates, outliers
from .findings import COLUMNS, KINDS, Finding, as_dicts, write_csv
from .labels import label_issues

__all__ = ["audit", "AuditResult", "CHECKS", "accuracy_with_and_without", "near_duplicates", "leaks", "outliers",
           "label_issues", "Search", "NEAR_DUPLICATE", "Finding", "as_dicts", "write_csv", "COLUMNS", "KINDS"]
