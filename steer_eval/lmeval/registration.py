"""Make `lm_eval --model steering_hf|steering_vllm` work with the released lm-eval (0.4.13).

lm-eval 0.4.13 has no plugin mechanism for models, and its CLI imports nothing of ours. The installed file
`steer_eval_lm_eval.pth` (written by setup.py into site-packages, for wheels and editable installs alike)
runs `install_import_hook()` at interpreter start. That only puts a finder on `sys.meta_path` (standard
library only, no torch and no lm_eval imported); when something imports `lm_eval.api.registry`, the finder
lets it load normally and then registers our two models as lazy "module:Class" placeholders, so their
module is imported only when one of them is asked for. Newer lm-eval reads the `lm_eval.models` entry points
in pyproject.toml instead and skips names registered already; both point at the same classes.
"""
from __future__ import annotations

import sys
import warnings

MODEL_CLASSES = {
    "steering_hf": "steer_eval.lmeval.models:SteeringHFLM",
    "steering_vllm": "steer_eval.lmeval.models:SteeringVLLMLM",
}
REGISTRY_MODULE = "lm_eval.api.registry"


def register(model_registry) -> None:
    """Add our models to lm-eval's model registry (placeholders; idempotent)."""
    # lm-eval's get_model() imports its own model table only while the registry is empty; registering
    # ours first would hide `hf`, `vllm`, ... so load that table before adding to it.
    import lm_eval.models  # noqa: F401

    for alias, target in MODEL_CLASSES.items():
        if alias not in model_registry:
            model_registry.register(alias, target=target)


class _RegisteringLoader:
    """Wraps the registry module's own loader: execute it as usual, then register."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        try:
            register(module.model_registry)
        except Exception as error:  # never break lm-eval itself over our models
            warnings.warn(f"steer-eval could not register its lm-eval models: {error!r}", stacklevel=2)

    def __getattr__(self, name):  # get_source, get_filename, ... for tracebacks and inspect
        return getattr(self._loader, name)


class _RegistryImportHook:
    """A one-shot meta-path finder that only ever answers for lm_eval.api.registry."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != REGISTRY_MODULE:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def install_import_hook() -> None:
    """Register our models as soon as lm-eval's registry exists (now, if it is imported already)."""
    if REGISTRY_MODULE in sys.modules:
        register(sys.modules[REGISTRY_MODULE].model_registry)
    elif not any(isinstance(finder, _RegistryImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegistryImportHook())
