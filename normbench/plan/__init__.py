"""The plan layer: the config schema (schema.py), run names (naming.py) and a run planned once from its composed
config (plan.py), which every layer above reads. Imports the parts and base layers."""
