"""abflow: one import namespace for the pipeline, its components and the serving runtime.

The source keeps the three folders the design names at the top of the checkout (``serving/``,
``components/``, ``pipelines/``); packaging maps them to ``abflow.serving``, ``abflow.components`` and
``abflow.pipelines`` so installing abflow never puts a top-level ``serving`` or ``pipelines`` package
beside a user's own folders of the same name.
"""
