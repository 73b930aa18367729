"""CM-CGNS (Lan et al., 2025): image-report pretraining with cross-modal cluster-guided negatives
and cross-modal masked image reconstruction; notebooks 08 (pretraining and its ablations) and 09
(the downstream suite).

- ``text``: MGCA's report cleaning, the reports' tokenizer, sentence-indexed tokens;
- ``data``: frontal image-report pairs and their batches;
- ``model``: the encoders, pooling, cross-modal attention and CM-MIR's decoder;
- ``losses``: global InfoNCE, SimSiam, the k-means clusters and the cluster-guided report loss;
- ``config``: profiles and ablations; ``train``: the two stages on the shared trainer.
"""
