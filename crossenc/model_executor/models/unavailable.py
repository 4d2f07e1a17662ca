"""What vLLM finds for crossenc's architectures when crossenc cannot run on the installed vLLM.

`crossenc.register()` enters each of its architectures as "unavailable:<ClassName>" then; vLLM
loads the class when a model asks for it, and the lookup fails with the reason (the vLLM
version, what is missing, crossenc's supported range) instead of "architecture not supported".
"""

from __future__ import annotations


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    from crossenc import compat

    raise compat.IncompatibleVLLMError(f"{name}: {compat.unavailable_reason()}")
