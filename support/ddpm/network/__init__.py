"""I-SynMed's denoising network (``unet``), in a folder of its own: diffusers records a model by
its module path, and a module whose parent folder is named like one of its pipelines (``ddpm``)
would be looked up among them when the saved pipeline is loaded."""
