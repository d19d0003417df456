"""Audience: behaviour features, RFM tiers, churn model, golden windows, segment rows and a
synthetic campus population. See docs/churn.md.

Public entry points: ``features.compute_features`` / ``features.refresh_features``,
``churn.train`` / ``churn.score``, ``golden.detect``, ``segments.segment_rows``,
``synth.generate``; ``cli.register`` adds ``recall segment`` and ``recall churn``.
"""
