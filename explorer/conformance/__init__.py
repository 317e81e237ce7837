"""A kernel capture against the model: :mod:`.importer` (a capture as a format-v1 trace),
:mod:`.conform` (replay and compare, per thread), :mod:`.command` (``import``, ``conform``)."""

from explorer.model.native import CAPTURE as _CAPTURE

#: True when :mod:`.importer` and :mod:`.conform` run compiled (mypyc, the capture group of
#: :mod:`explorer.model.native`): set before either is imported, so that every import of them
#: finds the same build.
NATIVE = _CAPTURE.activate(__path__)
