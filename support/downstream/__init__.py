"""The shared downstream harness: one way to judge every encoder (the reference encoder, DINO,
CM-CGNS) on classification, segmentation and detection.

- ``encoders``: the encoder protocol and registry (``build_encoder``, ``register_encoder``);
- ``backbones``: the built-in networks (reference network, torchvision ResNets, timm) and configs;
- ``auroc``: per-finding AUROC over CheXpert-style labels, seeded bootstrap intervals;
- ``data``: loader Datasets as (image, target) pairs, patient ids;
- ``subsets``: label fractions drawn by patient, stratified by the rarest finding;
- ``heads``: linear classifier, U-Net decoder (smp), FCOS detector (torchvision) on an encoder;
- ``tasks``: multi-label / multi-class classification, segmentation, detection as trainer tasks;
- ``metrics``: AUROC, accuracy, Dice, mAP@[0.40:0.75] with bootstrap intervals and guards;
- ``knn``: cosine kNN voting;
- ``protocols``: linear probe, fine-tune, kNN at 1 / 10 / 100 % of the labels (``evaluate``).

    from support.downstream import MultiLabelClassification, build_encoder, evaluate
    table = evaluate(build_encoder("resnet18", weights="encoder.safetensors"),
                     MultiLabelClassification(["Cardiomegaly", "Pleural Effusion"]),
                     "linear", (0.01, 0.1, 1.0), train, test)
"""

from .data import BoxedImages, ClassImages, LabelledImages, MaskedImages, Pairs, collate_boxes, patient_ids
from .backbones import ReferenceConfig, ReferenceNet, ResNetConfig, TimmConfig, ViTConfig
from .encoders import (ENCODERS, DenseEncoder, Encoder, build_encoder, check_encoder, encoder_names,
                       load_encoder_weights, register_encoder, save_encoder)
from .knn import cosine_neighbours, knn_vote
from .metrics import MGCA_IOU_THRESHOLDS, bootstrap_ci, mean_average_precision
from .protocols import COLUMNS, PROTOCOLS, DownstreamConfig, evaluate, pooled_features
from .subsets import patient_subset, stratified_subset
from .tasks import (Detection, HeadTask, MultiClassClassification, MultiLabelClassification, Segmentation, loop_for,
                    masked_bce, train_head)

__all__ = [
    "BoxedImages", "COLUMNS", "ClassImages", "DenseEncoder", "Detection", "DownstreamConfig", "ENCODERS", "Encoder",
    "HeadTask", "LabelledImages", "MGCA_IOU_THRESHOLDS", "MaskedImages", "MultiClassClassification",
    "MultiLabelClassification", "PROTOCOLS", "Pairs", "ReferenceConfig", "ReferenceNet", "ResNetConfig", "Segmentation",
    "TimmConfig", "ViTConfig", "bootstrap_ci", "build_encoder", "check_encoder", "collate_boxes", "cosine_neighbours",
    "encoder_names", "evaluate", "knn_vote", "load_encoder_weights", "loop_for", "masked_bce",
    "mean_average_precision", "patient_ids", "patient_subset", "pooled_features", "register_encoder",
    "save_encoder", "stratified_subset", "train_head",
]
