"""The parts layer: normalization layers (norms/), models and conv options (models/), datasets with their data path
(data/), optimizers and schedules (optim.py). Imports only the base layer."""
