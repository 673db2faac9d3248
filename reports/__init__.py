"""Leaderboards, tables and plots computed from a run's records."""
