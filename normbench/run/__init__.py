"""The run layer: one run from a composed config to its record. The config schema, setup, the training loop,
evaluation, TensorBoard output, the activation monitor, checkpoints, the record and the report that reads records.
Imports the parts and base layers; knows nothing of Hydra's launchers or the command line."""
