"""The parts layer: normalization layers (norms/), models (models/) and datasets with their data path (data.py).
Imports only the base layer."""
