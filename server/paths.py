"""Where the project's TorchServe files are: the checkout, or the app directory of the image.

Every module that needs config.properties, log4j2.xml or the model store takes it from
here; SENTIMENT_ROOT moves them all (the container image sets it).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("SENTIMENT_ROOT") or Path(__file__).resolve().parent.parent)
CONFIG = ROOT / "config.properties"
LOG_CONFIG = ROOT / "log4j2.xml"
MODEL_CONFIG = ROOT / "model-config.yaml"
MODEL_STORE = ROOT / "model_store"
DEFAULT_MODEL_DIR = ROOT / "models" / "minilm-tweets"
ARCHIVE_SCRIPT = ROOT / "archive.sh"
# config.properties keys whose relative paths are relative to ROOT
ROOT_RELATIVE_KEYS = ("metrics_config", "model_store")
