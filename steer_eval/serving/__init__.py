"""Serving steered models over HTTP: vLLM's OpenAI-compatible server with steering chosen per request
(`steer-eval serve`; docs/serving.md)."""
