"""The demo checkpoint in the user's cache: built once, with its held-out quality beside it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from crossenc.demo.build import BuildSettings, build
from crossenc.demo.quality import Quality, evaluate, held_out_pairs

QUALITY_FILE = "crossenc_demo_quality.json"


def cache_root() -> Path:
    if os.environ.get("CROSSENC_CACHE"):
        return Path(os.environ["CROSSENC_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "crossenc"


def demo_model_path(settings: BuildSettings = BuildSettings()) -> Path:
    return cache_root() / f"demo-{settings.cache_key()}"


def ensure_demo_model(settings: BuildSettings = BuildSettings(), log=print) -> Path:
    """The cached demo checkpoint, built and evaluated first if it is not there yet."""
    path = demo_model_path(settings)
    if (path / QUALITY_FILE).exists():
        return path
    log(f"building the demo cross-encoder into {path} (once; 6 to 13 minutes on 2 CPU cores)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    try:
        build(settings, tmp, log=log)
        held_out = held_out_pairs(settings)
        log(f"measuring its quality on {len(held_out)} held-out pairs (about a minute)")
        quality = evaluate(tmp, held_out)
        (tmp / QUALITY_FILE).write_text(json.dumps(quality.as_dict(), indent=2) + "\n")
        try:
            tmp.rename(path)
        except OSError:  # another process finished the same build first
            if not (path / QUALITY_FILE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def stored_quality(path: Path) -> Quality | None:
    file = Path(path) / QUALITY_FILE
    return Quality(**json.loads(file.read_text())) if file.exists() else None

