"""Training engine: one readable step in :mod:`trainer`, everything else in :mod:`hooks`."""
