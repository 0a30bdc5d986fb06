import logging
log = logging.getLogger("flowspec.task")
def make(count, note, token):
    log.info("note: %s", note)
    log.info("calling the service with token %s", token)
    log.warning('"><img src=x onerror="window.__xss=2">')
    return list(range(count))
def square(x):
    log.info("squaring %s", x)
    if x == 3:
        raise ValueError("three is not allowed <script>window.__xss=3</script>")
    return x * x
def total(values):
    return sum(values)
