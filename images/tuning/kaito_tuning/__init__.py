"""Kaito's tuning job: LoRA / QLoRA fine-tuning that writes a servable PEFT adapter.

Run `python -m kaito_tuning --help`; `python -m kaito_tuning.download` fetches data.
"""

__version__ = "0.1.0"
