"""Evaluation of synthetic chest X-ray sets and the reader-study kit.

Modules, each holding one kind of measurement:

- ``images``: one way to read image sets (arrays, torch Datasets, image files) as float tensors;
- ``features``: the ``FeatureEncoder`` protocol and batched embedding;
- ``reference_encoder``: a small chest X-ray classifier trained per dataset, the default feature space;
- ``inception``: Inception-v3 FID exactly as torchmetrics/torch-fidelity compute it, local weights only;
- ``distribution``: Frechet distance, KID, precision/recall/density/coverage;
- ``diversity``: MS-SSIM diversity of a set;
- ``turing``: the automated Turing test (real vs synthetic classifier AUROC);
- ``conditional``: per-finding AUROC of requested labels under the reference encoder;
- ``privacy``: nearest-training-neighbour audit, same-patient calibrated flags, release gate;
- ``utility``: train on synthetic, test on real, with bootstrap confidence intervals (the classifier is
  trained through :mod:`support.downstream`, whose ``auroc`` module scores it);
- ``reader_study``: blinded real/synthetic sets, answer sheets and their scoring;
- ``plots``: the figures of notebook 06;
- ``evaluate``: ``evaluate_set``, every metric for one synthetic set as one flat row.
"""
