"""The one root of every error planktonzilla raises on purpose.

A `PlanktonzillaError` is a problem the user can act on (a bad path, a locked store, an
unreadable model directory…): the CLI prints its message on one line and exits with
`EXIT_USER_ERROR`. Anything else escaping a command is a bug and keeps its traceback.

    try:
        store.ingest(read_folder("images/"), source="cruise1")
    except PlanktonzillaError as exc:
        print(exc)
"""

from __future__ import annotations

__all__ = [
    "EXIT_USER_ERROR",
    "DownloadError",
    "ExtractError",
    "InputError",
    "ModelError",
    "PlanktonzillaError",
    "ReaderError",
    "SourceError",
    "SplitError",
    "StoreError",
    "StoreLockedError",
    "TaxonomyError",
    "UnsafeArchiveError",
]

#: Exit status of a command that stopped on a `PlanktonzillaError` (the same as a usage error).
EXIT_USER_ERROR = 2


class PlanktonzillaError(Exception):
    """A problem with the user's input, data or environment, told in one line."""


class InputError(PlanktonzillaError, ValueError):
    """An argument or option the user gave is invalid."""


class StoreError(PlanktonzillaError):
    """The store is missing, inconsistent or cannot be written."""


class StoreLockedError(StoreError):
    """Another process holds the store's writer lock."""


class ReaderError(PlanktonzillaError, ValueError):
    """An input file cannot be read as the format it claims to be."""


class SourceError(PlanktonzillaError):
    """A public collection cannot be fetched, found or laid out."""


class DownloadError(SourceError):
    """A download failed (after its retries) or did not verify."""


class ExtractError(SourceError):
    """An archive cannot be extracted."""


class UnsafeArchiveError(ExtractError):
    """An archive member would land outside its folder, or is a link or a device."""


class SplitError(PlanktonzillaError, ValueError):
    """A split cannot be made or found."""


class ModelError(PlanktonzillaError):
    """A model directory or checkpoint cannot be loaded, or does not fit its use."""


class TaxonomyError(PlanktonzillaError):
    """A taxonomy lookup or mapping file failed."""
