"""Model architectures: one module per family (registered with pyiqa by iqa_plugins.registration)."""
