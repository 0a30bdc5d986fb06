"""Tasks of the etl-callbacks example."""
import os
import tempfile

from flowspec import context


def extract(count: int) -> list[dict]:
    records = [{"id": i, "value": i + 1} for i in range(count)]
    context.logger.info("extracted %d records", len(records))
    return records


def transform(record: dict) -> int:
    return record["value"] ** 2


def load(values: list[int], target: str = "") -> int:
    total = sum(values)
    # Nothing is written into the folder the run was started from unless you ask for it.
    target = target or os.path.join(tempfile.mkdtemp(prefix="flowspec-etl-"), "totals.txt")
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(f"{context.run_id} {total}\n")
    context.logger.info("loaded total %d into %s", total, target)
    return total
