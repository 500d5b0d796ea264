"""The lm-eval task files (YAML + utils.py) that ship with the package; see steer_eval.lmeval.registration."""
