"""Entry point for the ``celery`` command: ``celery -A workers.main worker``."""

from workers.app import app, configure

configure()

__all__ = ["app"]
