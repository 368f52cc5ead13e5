"""Reusable mixers and blocks shared by the model families."""
