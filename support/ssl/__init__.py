"""Self-supervised pretraining on real or synthetic radiographs: I-SynMed's DINO step (notebook 07).

Modules: ``config`` (typed parameters, the test/quick/full profiles, the grayscale augmentation
choices), ``data`` (seeded multi-crop views through lightly's ``DINOTransform``) and ``train``
(DINO as a task of :mod:`support.core.trainer` with lightly's head, loss and momentum utilities;
the exported encoder is judged through :mod:`support.downstream`).
"""
