"""Metrics and the scoring of label predictions (eval_* rules)."""
