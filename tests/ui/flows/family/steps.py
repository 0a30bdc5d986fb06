import logging
import os

log = logging.getLogger("flowspec.task")


def prepare():
    log.info("preparing")
    return 1


def work(region, fail):
    # a marker file beside the spec stands for a fixed upstream: the restart then succeeds
    fixed = os.path.exists(os.path.join(os.path.dirname(__file__), "fixed"))
    if region == fail and not fixed:
        raise ValueError(f"region {region} is broken")
    log.info("worked on %s", region)
    return region.upper()


def report(done):
    log.info("report of %s", done)
    return len(done)
