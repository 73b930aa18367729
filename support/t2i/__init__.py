"""Text-to-image LoRA fine-tuning on image-report pairs ("This X-Ray Does Not Exist").

Modules: ``config`` (typed parameters and the test/quick/full profiles), ``captions`` (captions
from reports, the report-corpus tokenizer, truncation to the token limit), ``data`` (image-caption
pairs), ``objective`` (the latent diffusion loss of captioned images), ``base_model`` (Stable
Diffusion 2.1-base configs, the small default base model and its two pretraining tasks), ``lora``
(peft adapters and their diffusers-format files), ``train`` (LoRA fine-tuning as a task of the
shared trainer, and its CLI), ``sampling`` (prompt plans, the sampler call, the synthetic
dataset), ``evaluate`` (before/after images and how often requested findings are found) and
``figures`` (the notebook's plots and headline numbers).
"""
