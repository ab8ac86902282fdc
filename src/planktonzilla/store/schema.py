"""The store's table schemas, in one place. Bump `SCHEMA_VERSION` on any change."""

import pyarrow as pa

SCHEMA_VERSION = 1

_UTC = pa.timestamp("us", tz="UTC")

OBJECTS = pa.schema(
    [
        pa.field("object_id", pa.string(), nullable=False),  # sha256 of the image bytes
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_object_id", pa.string()),
        pa.field("raw_label", pa.string()),
        pa.field("image", pa.binary()),  # original encoded bytes; null = metadata-only object
        pa.field("image_format", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("channels", pa.int8()),
        pa.field("instrument", pa.string()),
        pa.field("pixel_size_um", pa.float64()),
        pa.field("lat", pa.float64()),
        pa.field("lon", pa.float64()),
        pa.field("depth_min", pa.float64()),
        pa.field("depth_max", pa.float64()),
        pa.field("time_utc", _UTC),
        pa.field("sample_id", pa.string()),
        pa.field("license", pa.string()),
        pa.field("license_url", pa.string()),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("extra", pa.string()),  # JSON object
        pa.field("ingested_at", _UTC, nullable=False),
        pa.field("tool_version", pa.string(), nullable=False),
    ],
    metadata={"planktonzilla.schema_version": str(SCHEMA_VERSION)},
)

REJECTED = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("source_object_id", pa.string()),
        pa.field("raw_label", pa.string()),
        pa.field("reason", pa.string(), nullable=False),  # e.g. corrupt, duplicate_of:<id>
        pa.field("message", pa.string(), nullable=False),
        pa.field("object_id", pa.string()),  # content hash when known (the kept copy's id)
        pa.field("rejected_at", _UTC, nullable=False),
        pa.field("tool_version", pa.string(), nullable=False),
    ],
    metadata={"planktonzilla.schema_version": str(SCHEMA_VERSION)},
)

#: `samples/<source>.parquet`: one row per sampling unit with its sampled volume and where the
#: volume comes from (planktonzilla.ecology.volumes). A unit is a whole sample (`subsample_by`
#: null: IFCB bin, FlowCam run), one acquisition of it (`acq_id`: a ZooScan fraction with its
#: own sub-sampling) or a depth bin of a profile (`depth`: UVP). Joined at read time.
SAMPLES = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("subsample_id", pa.string()),  # acq_id, or a depth bin label ("0-5")
        pa.field("subsample_by", pa.string()),  # null | "acq_id" | "depth"
        pa.field("time_utc", _UTC),
        pa.field("lat", pa.float64()),
        pa.field("lon", pa.float64()),
        pa.field("depth_min", pa.float64()),
        pa.field("depth_max", pa.float64()),
        pa.field("volume_ml", pa.float64()),  # the volume the counted objects were seen in
        pa.field("volume_method", pa.string()),  # ifcb_header, ifcb_adc, flowcam_summary, …
        pa.field("fraction", pa.float64()),  # sub-sampling fraction already in volume_ml
        pa.field("instrument", pa.string()),
        pa.field("origin", pa.string()),  # the file the volume was read from
        pa.field("extra", pa.string()),  # JSON object (run time, look time, efficiency…)
    ],
    metadata={"planktonzilla.schema_version": str(SCHEMA_VERSION)},
)

#: Columns that hold per-object metadata (everything but identity, bytes and bookkeeping).
METADATA_COLUMNS = (
    "instrument",
    "pixel_size_um",
    "lat",
    "lon",
    "depth_min",
    "depth_max",
    "time_utc",
    "sample_id",
    "license",
    "license_url",
)
