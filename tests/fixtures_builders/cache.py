"""Where fixture builders keep the random-weight model files: built once per machine."""
from __future__ import annotations

import os
from pathlib import Path

# Bump when a builder changes what it writes, so stale caches are rebuilt.
BUILDERS_VERSION = "2"


def cache_root() -> Path:
    root = Path(os.environ.get("PARTID_FIXTURE_CACHE", Path.home() / ".cache" / "partid-fixtures")) / f"v{BUILDERS_VERSION}"
    root.mkdir(parents=True, exist_ok=True)
    return root


def cached(relpath: str, build) -> Path:
    """Return cache/relpath, calling build(tmp_path) first if it does not exist (atomic rename)."""
    final = cache_root() / relpath
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    build(tmp)
    os.replace(tmp, final)
    return final
