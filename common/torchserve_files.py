"""TorchServe's own files: its config.properties and the key_file.json it writes into the
directory it was started from."""

from __future__ import annotations

import json
from pathlib import Path

KEY_FILE = "key_file.json"


def read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def read_keys(key_file: Path) -> dict[str, str]:
    """{"inference": ..., "management": ..., "API": ...} from TorchServe's key_file.json."""
    data = json.loads(Path(key_file).read_text())
    return {name: entry["key"] for name, entry in data.items()}


def expiries(key_file: Path) -> dict[str, str]:
    """Each key's expiry as TorchServe wrote it ("never" for the API key)."""
    data = json.loads(Path(key_file).read_text())
    return {name: entry.get("expiration time", "never") for name, entry in data.items()}
