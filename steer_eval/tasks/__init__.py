"""The lm-eval task files (YAML + utils.py) that ship with the package; see steer_eval.lmeval.registration."""
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
