"""Fine-tuning strategies: what is trained, and how, on top of a task model."""
