"""Recall: a multi-channel user-recall campaign orchestrator."""

__version__ = "0.1.0"
