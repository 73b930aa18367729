"""The chest X-ray phantom: a procedural 3D thorax per patient, projected like a radiograph into
a frontal (PA/AP) and a lateral view of the same body, with findings whose truth is known
(labels, boxes, masks), anatomy masks of the lung fields and the heart, burned-in text with its
masks and clean twins, and reports; written in the MIMIC-CXR-JPG layout so that it is read back
like the real datasets.

    from support.phantom import PhantomConfig, generate_phantom
    summary = generate_phantom("outputs/phantom", PhantomConfig(n_patients=50, image_size=256))
"""

from support.phantom.anatomy import Anatomy, Pose, sample_anatomy, sample_pose
from support.phantom.config import DEFAULT_PREVALENCE, PhantomConfig
from support.phantom.findings import sample_spec
from support.phantom.generate import generate_phantom, plan_studies
from support.phantom.render import RenderedStudy, cardiothoracic_ratio, render_study

__all__ = [
    "Anatomy", "Pose", "PhantomConfig", "DEFAULT_PREVALENCE", "RenderedStudy", "cardiothoracic_ratio",
    "generate_phantom", "plan_studies", "render_study", "sample_anatomy", "sample_pose", "sample_spec",
]
