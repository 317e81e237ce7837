"""A trace replayed on the model: :mod:`.timeline` (steps, checkpoints, ``state_at``, the bulk
path for long traces) and :mod:`.render` (one text line per step: the ``replay`` command and the
sample goldens)."""
