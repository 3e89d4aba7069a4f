"""Where the project's TorchServe files are: the checkout, or the app directory of the image.

Every module that needs config.properties, log4j2.xml or the model store takes it from
here; SENTIMENT_ROOT moves them all (the container image sets it).
"""

from __future__ import annotations

import os
import shutil
import sys
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
HANDLERS = ROOT / "handlers"
# the modules an archive packs beside the handler, one a line (read by archive.sh too)
ARCHIVE_MODULES = HANDLERS / "archive-modules.txt"


def tool(name: str) -> str | None:
    """Where the command `name` is: the venv's bin first (kubectl comes there from its PyPI
    wheel, requirements-dev.txt), then PATH; None when neither has it."""
    return shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def archive_modules() -> list[str]:
    """The names of the modules (handlers/NAME.py) an archive packs beside its handler."""
    lines = (line.strip() for line in ARCHIVE_MODULES.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]
