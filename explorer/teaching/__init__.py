"""Teaching on the sample traces: :mod:`.tours` (guided tours, their format and resolution),
:mod:`.predict` (predict-the-next-step questions the engine marks), :mod:`.handout` (a tour as a
printable page)."""
