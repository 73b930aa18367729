"""Text-to-image LoRA fine-tuning on image-report pairs ("This X-Ray Does Not Exist").

Modules: ``config`` (typed parameters and the test/quick/full profiles), ``captions`` (captions
from reports, the report-corpus tokenizer, truncation to the token limit), ``data`` (image-caption
pairs), ``base_model`` (Stable Diffusion 2.1-base configs, the small default base model and its
pretraining), ``lora`` (peft adapters and their diffusers-format files), ``checkpoints``
(resumable adapter-only training state), ``train`` (the accelerate loop and its CLI),
``sampling`` (prompt plans, samplers, the synthetic-dataset writer loop), ``evaluate``
(before/after images and how often requested findings are found) and ``figures`` (the
notebook's plots and headline numbers).
"""
