"""The base layer: errors and exit codes, atomic files, signals, where the configs are, the console. Imports no
other layer."""
