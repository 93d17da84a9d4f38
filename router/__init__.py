"""flashpro: an OpenAI-compatible routing proxy for DeepSeek V4."""

__version__ = "0.1.0"
