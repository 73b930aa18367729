"""The data layer: the phantom, the real-dataset adapters, and the loaders they share."""
