"""Evaluators: metrics computed on inpainted outputs."""
