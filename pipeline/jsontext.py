"""JSON from files a user hands over (store metadata, head headers, export descriptions), parsed so that
every failure is a ValueError the caller turns into a message naming the file: a document nested too
deep for the parser raises RecursionError in :func:`json.loads`, which no ``except ValueError`` catches."""
from __future__ import annotations

import json


class JSONTooDeep(ValueError):
    """A JSON document nested deeper than the parser can follow."""


def loads(text):
    """:func:`json.loads`, with a document nested too deep refused as a ValueError (:class:`JSONTooDeep`)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise JSONTooDeep("it is nested too deep to be read (JSON arrays or objects inside each other "
                          "thousands of levels deep); it was not written by this tool") from None
