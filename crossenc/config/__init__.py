"""How crossenc serves checkpoints: `resolve` (runner, convert, pooling tasks and score route,
from the config alone), `crossenc explain`, and the conversion-override hooks (`overrides`)."""

from crossenc.config.resolve import Resolution, ResolutionError, resolve

__all__ = ["Resolution", "ResolutionError", "resolve"]
