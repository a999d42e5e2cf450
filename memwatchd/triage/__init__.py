"""Leak triage: a bounded, sampled allocation trace of one process, and its report."""
