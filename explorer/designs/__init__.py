"""The designs the engine can run and what they cost: :mod:`.rationale` (each mode beside the
reason the sources give for it) and :mod:`.overhead` (static against Dynamic PAMT memory)."""
