"""CNN codes: streaming extraction, a content-addressed cache, and the on-disk codes directory."""

from headstart.features.cache import (
    CODES_VERSION,
    CacheWriter,
    FeatureCache,
    default_cache_dir,
    extractor_id,
    extractor_meta,
    hash_file,
)
from headstart.features.export import load_codes, write_codes
from headstart.features.extract import ExtractResult, extract_codes

__all__ = [
    "CODES_VERSION",
    "CacheWriter",
    "ExtractResult",
    "FeatureCache",
    "default_cache_dir",
    "extract_codes",
    "extractor_id",
    "extractor_meta",
    "hash_file",
    "load_codes",
    "write_codes",
]
