"""lm-evaluation-harness integration: model classes (steering_hf, steering_vllm), task documents and metrics.

Kept import-free: `registration` runs at interpreter start (through a .pth hook) and must stay cheap.
"""
