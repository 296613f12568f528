"""relay: a webhook receiver and callback relay for AI-generation run APIs."""

__version__ = "0.1.0"
