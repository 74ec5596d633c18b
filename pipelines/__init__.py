"""abflow's end-to-end pipeline, its compiled YAML and the ``abflow`` command line."""
