"""Evaluation: metrics, bootstrap intervals, predictions, plots."""
