"""steer-eval: measure compositional steering tokens (arXiv 2601.05062) at scale."""
__version__ = "0.1.0"
