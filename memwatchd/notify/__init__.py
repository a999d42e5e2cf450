"""Pipeline stage: telling (pure rendering, background delivery, the Apprise child)."""
