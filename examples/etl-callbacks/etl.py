"""Tasks of the etl-callbacks example."""
from flowspec import context


def extract(count: int) -> list[dict]:
    records = [{"id": i, "value": i + 1} for i in range(count)]
    context.logger.info("extracted %d records", len(records))
    return records


def transform(record: dict) -> int:
    return record["value"] ** 2


def load(values: list[int], target: str) -> int:
    total = sum(values)
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(f"{context.run_id} {total}\n")
    context.logger.info("loaded total %d into %s", total, target)
    return total
