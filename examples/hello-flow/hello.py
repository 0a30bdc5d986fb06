"""Tasks of the hello-flow example: plain functions, no decorator."""
import os

from flowspec import context


def say_hello(name: str, punctuation: str = "!") -> str:
    # GREETING comes from environment.env in flow.yaml.
    greeting = f"{os.environ.get('GREETING', 'Hi')}, {name}{punctuation}"
    context.logger.info(greeting)
    return greeting


def report(greetings: list) -> int:
    context.logger.info("greeted %d people", len(greetings))
    return len(greetings)
