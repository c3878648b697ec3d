"""forgetbench: measure forgetting under fine-tuning and compare mitigations."""

__version__ = "0.1.0"
