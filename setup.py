"""Everything is declared in pyproject.toml; this file only adds the lm-eval registration hook.

`steer_eval_lm_eval.pth` lands in site-packages for wheel installs (via build_lib) and for editable installs
(written straight into the editable wheel), so `lm_eval --model steering_hf|steering_vllm` works in any new
shell with lm-eval 0.4.13, which has no model entry points. See steer_eval/lmeval/registration.py.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_FILE = "steer_eval_lm_eval.pth"
# A .pth line that starts with "import" is executed at interpreter start; it must stay cheap and never fail.
PTH_LINE = ("import sys; exec('try:\\n from steer_eval.lmeval.registration import install_import_hook\\n"
            "except ImportError:\\n pass\\nelse:\\n install_import_hook()')\n")


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        targets = [Path(self.build_lib)]
        if self.editable_mode:  # build_lib is not part of an editable wheel; its root is the install dir
            targets.append(Path(self.get_finalized_command("install").install_lib))
        for target in targets:
            target.mkdir(parents=True, exist_ok=True)
            (target / PTH_FILE).write_text(PTH_LINE)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH_FILE)]


setup(cmdclass={"build_py": BuildPyWithPth})
