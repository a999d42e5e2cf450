"""memwatchd: per-process memory monitor."""
