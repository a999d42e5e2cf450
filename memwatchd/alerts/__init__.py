"""Pipeline stage: rules over the history (fit maths, alert lifecycle)."""
