"""Hooks of the etl-callbacks example: on_start takes no argument, on_exit takes the run summary."""
import os

from flowspec import context


def announce() -> None:
    context.logger.info("starting %s for %s", context.flow_name, os.environ["ETL_RUN_LABEL"])


def report(run) -> None:
    # `run` is a read-only summary: flow, run_id, state, duration_s, tasks, parameters.
    done = sum(1 for t in run["tasks"].values() if t["state"] == "Success")
    context.logger.info("run %s ended %s: %d of %d tasks succeeded",
                        run["run_id"][:8], run["state"], done, len(run["tasks"]))
