"""abflow's pipeline steps: plain, unit-tested logic plus thin typed KFP interfaces (``steps``)."""
