"""XGeM: any-to-any generation of frontal view, lateral view and report through a shared
contrastive latent space and Multi-Prompt training (notebook 03)."""
