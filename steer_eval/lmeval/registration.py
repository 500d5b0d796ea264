"""Make `lm_eval --model steering_vllm --tasks compose_2` work with the released lm-eval (0.4.13).

lm-eval 0.4.13 has no plugin mechanism, and its CLI imports nothing of ours. The installed file
`steer_eval_lm_eval.pth` (written by setup.py into site-packages, for wheels and editable installs alike)
runs `install_import_hook()` at interpreter start. That only puts a finder on `sys.meta_path` (standard
library only, no torch and no lm_eval imported). When lm-eval imports one of the modules below, the finder
lets it load normally and then hands it to `steer_eval.lmeval.plugin`: the model registry gets our two
models as lazy "module:Class" placeholders (imported only when one is asked for), the TaskManager class
learns our task folder, and user errors print as one line.
"""
from __future__ import annotations

import sys
import warnings


def _on_registry(module) -> None:
    from steer_eval.lmeval import plugin
    plugin.register_models(module.model_registry)
    plugin.report_user_errors()


def _on_task_manager(module) -> None:
    from steer_eval.lmeval import plugin
    plugin.patch_task_manager(module.TaskManager)


AFTER_IMPORT = {"lm_eval.api.registry": _on_registry, "lm_eval.tasks.manager": _on_task_manager}


class _HookedLoader:
    """Wraps a module's own loader: execute it as usual, then run our callback on it."""

    def __init__(self, loader, callback):
        self._loader, self._callback = loader, callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        try:
            self._callback(module)
        except Exception as error:  # never break lm-eval itself over our additions
            warnings.warn(f"steer-eval could not extend {module.__name__}: {error!r}", stacklevel=2)

    def __getattr__(self, name):  # get_source, get_filename, ... for tracebacks and inspect
        return getattr(self._loader, name)


class _LmEvalImportHook:
    """A meta-path finder that only answers for the modules in AFTER_IMPORT, once each."""

    def find_spec(self, fullname, path=None, target=None):
        callback = AFTER_IMPORT.get(fullname)
        if callback is None or fullname in sys.modules:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _HookedLoader(spec.loader, callback)
                return spec
        return None


def install_import_hook() -> None:
    """Extend lm-eval as soon as its modules exist (now, for those imported already)."""
    for name, callback in AFTER_IMPORT.items():
        if name in sys.modules:
            callback(sys.modules[name])
    if not any(isinstance(finder, _LmEvalImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LmEvalImportHook())
