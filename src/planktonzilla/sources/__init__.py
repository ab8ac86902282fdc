"""The public plankton image collections: a registry of what they are (`registry`), careful
downloads (`download`), safe extraction (`extract`) and one-call ingest (`ingest`)."""

from planktonzilla.sources.registry import Collection, collections, get, ids

__all__ = ["Collection", "collections", "get", "ids"]
