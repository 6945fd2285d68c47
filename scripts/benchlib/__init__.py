"""Helpers for scripts/bench: load generation (wrk), servers, in-process measurements, report."""
