"""The shared core every system builds on; it imports no system package.

``config`` (the loop fields, one validation style, profile lookup), ``trainer`` (``fit``: the
accelerate loop, resume, guarded updates, cadence, trackers), ``checkpoints`` (folders with
checksums, training state), ``schedules`` (noise schedules, targets, loss weights, samplers),
``sample_writer`` (plan -> shard -> generate -> write -> register, for every generator) and
``images`` (the image grid and PNG files).
"""
