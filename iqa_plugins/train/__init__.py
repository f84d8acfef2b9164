"""Training: DR.Experts through pyiqa's training framework (recipes, model, per-iteration schedule, splits,
DDP), ExIQA's two phases, and the offline end-to-end demo (``iqa-plugins demo``)."""
