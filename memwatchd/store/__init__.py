"""History store: one writer owned by the daemon (writer.py), read-only queries for memwatchctl (reader.py).

Submodules are imported lazily by their users so that memwatchctl never loads aiosqlite.
"""
