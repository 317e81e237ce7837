"""A kernel capture against the model: :mod:`.importer` (a capture as a format-v1 trace),
:mod:`.conform` (replay and compare, per thread), :mod:`.command` (``import``, ``conform``)."""
