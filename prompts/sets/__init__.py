"""Prompt-set data files: one YAML file per named prompt set (see prompts/spec.py); no code."""
