"""A pipeline of N steps that do nothing, run by ``kfp.local`` exactly as ``abflow run`` runs abflow's.

It is the baseline of ``pipeline_bench.py``: what KFP's local runner costs per step (a subprocess, an
interpreter start, the executor reading and writing its JSON) before a step does any work. The
components are declared like abflow's (``install_kfp_package=False``, the runner's interpreter, a
string handed from step to step), so the difference between the two runs is abflow's own work.

    python bench/noop_pipeline.py --steps 7 --pipeline-root /tmp/noop-root

No ``from __future__ import annotations`` here: KFP reads the step's annotations as real types.
"""

import argparse

from kfp import dsl, local


def noop(token: str) -> str:
    return token


def build(steps: int):
    step = dsl.component(noop, base_image="python:3.11", install_kfp_package=False)

    @dsl.pipeline(name="noop", description=f"{steps} steps that pass a string along and do nothing")
    def noop_pipeline(token: str = "bench") -> str:
        task = step(token=token)
        task.set_caching_options(False)
        for _ in range(steps - 1):
            task = step(token=task.output)
            task.set_caching_options(False)
        return task.output

    return noop_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=7, help="number of chained no-op steps (default 7)")
    parser.add_argument("--pipeline-root", required=True, help="where kfp.local writes the run's outputs")
    args = parser.parse_args()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=args.pipeline_root)
    build(args.steps)()


if __name__ == "__main__":
    main()
