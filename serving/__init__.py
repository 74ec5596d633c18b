"""abflow's serving runtime: Seldon-protocol model servers and the A/B executor.

Dependency-light on purpose: this package is what runs inside the serving image and in the
local deployment, so it must not import kfp or anything from ``components``/``pipelines``.
"""
