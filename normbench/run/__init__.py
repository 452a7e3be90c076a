"""The run layer: one run from its plan to its record. Setup, the training loop, evaluation, TensorBoard output,
the activation monitor, checkpoints, the record and the report that reads records. Imports the plan, parts and base
layers; knows nothing of Hydra's launchers or the command line."""
