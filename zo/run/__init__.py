"""Everything about a run folder and a run's life: files and checkpoints (folder), signals, progress output."""
