"""Self-distillation of steering tokens and the activation baselines: the library the trainers/ scripts use."""
