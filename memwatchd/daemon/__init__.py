"""The daemon: wiring of the pipeline, sd_notify, metrics endpoint, logging."""
