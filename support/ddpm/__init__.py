"""I-SynMed's unconditional pixel-space DDPM: configuration, the training task, sampling.

Modules: ``config`` (typed parameters and the test/quick/full profiles), ``model`` (the UNet),
``train`` (the method as a task of :mod:`support.core.trainer`, and its CLI), ``sampling`` (the
sampler loop, the synthetic-dataset writer call, the pixel Fréchet distance), ``quality``
(samplers compared against held-out images) and ``data`` (a plain image-folder / MIMIC-layout
dataset for the command line). Noise schedules and samplers are :mod:`support.core.schedules`.
"""
