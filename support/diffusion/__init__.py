"""Unconditional pixel-space diffusion (I-SynMed's DDPM): configuration, training, sampling.

Modules: ``config`` (typed parameters and the test/quick/full profiles), ``schedules`` (noise
schedules, targets and loss weights), ``model`` (the UNet), ``checkpoints`` (resumable training
state as safetensors), ``train`` (the accelerate training loop and its CLI), ``sampling``
(samplers, the synthetic-dataset writer loop, the pixel Fréchet distance) and ``data`` (a plain
image-folder / MIMIC-layout dataset for the command line).
"""
