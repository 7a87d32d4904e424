"""Kaito's inference server: an OpenAI-compatible aiohttp API over vLLM or transformers.

Run `python -m kaito_inference --help`. The package never imports the operator (`kaito`).
"""

__version__ = "0.1.0"
