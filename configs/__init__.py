"""Experiment configs: one file per (method, dataset), each with get_config(arg)."""
