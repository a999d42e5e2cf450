"""memwatchctl: the read-only query CLI, its renderers and the live view."""
