"""pyiqa plugin adding the DR.Experts and ExIQA no-reference metrics.

Kept light on purpose: the auto-activation hook imports this package at interpreter start-up,
so nothing here may import torch or pyiqa.
"""

__version__ = "0.1.0"
