"""The store: immutable Parquet shards of images + metadata, a manifest written last, rejected
inputs with their reasons, and the tables joined at read time (taxonomy, splits).

The store owns its layout (`planktonzilla.store.layout`): nothing else parses the manifest or
spells a store sub-directory.
"""

from planktonzilla.exceptions import StoreError, StoreLockedError
from planktonzilla.store.layout import StoreLayout
from planktonzilla.store.objectstore import IngestReport, ObjectStore

__all__ = ["IngestReport", "ObjectStore", "StoreError", "StoreLayout", "StoreLockedError"]
