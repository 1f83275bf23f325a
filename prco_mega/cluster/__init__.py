"""The cluster: the `cluster:` config section, the torchrun/Slurm launchers and the memory
planner."""
