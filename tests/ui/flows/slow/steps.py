import logging
import time

log = logging.getLogger("flowspec.task")


def tick(ticks):
    for n in range(1, ticks + 1):
        log.info("tick %s", n)
        time.sleep(0.5)


def finish():
    log.info("finished")
