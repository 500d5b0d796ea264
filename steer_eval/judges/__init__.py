"""Quality judged by a model: fluency (perplexity) and an LLM judge over any OpenAI-compatible endpoint."""
