"""Functions that edit the Ontology, declared with ``edits=`` as the official SDK's ``@function`` takes it.

The object type classes stand in for Ontology SDK ones: what counts is their ``api_name()``."""

import dataclasses

import cmworker


class Aircraft:
    @staticmethod
    def api_name() -> str:
        return "Aircraft"


class Flight:
    @staticmethod
    def api_name() -> str:
        return "Flight"


@dataclasses.dataclass
class Delay:
    flight: str
    minutes: int


@cmworker.function(edits=[Aircraft, Flight])
def ground(context, event: Delay) -> list[str]:
    return [event.flight]


@cmworker.function(edits=[Flight])
def delay(context, event: Delay) -> int:
    return event.minutes


@cmworker.function
def no_edits(context, event: Delay) -> int:
    return 0
