"""KADID-10k's 25 distortions (:mod:`iqa_plugins.data.distortions`) and the multi-distortion data set
generator (:mod:`iqa_plugins.data.generator`). Nothing is imported here so that importing the package stays
cheap; neither module needs torch."""
