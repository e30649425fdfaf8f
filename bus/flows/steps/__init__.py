"""Mediation steps: each takes one item and gives back zero, one or many."""

from bus.flows.steps.base import Item, Step, StepError, attributes_of
from bus.flows.steps.enrich import Enrich, Lookup
from bus.flows.steps.filter import Filter
from bus.flows.steps.python import PythonStep, import_function
from bus.flows.steps.route import Route
from bus.flows.steps.set_key import SetKey
from bus.flows.steps.split import Split
from bus.flows.steps.transform import Transform

__all__ = [
    "Enrich",
    "Filter",
    "Item",
    "Lookup",
    "PythonStep",
    "Route",
    "SetKey",
    "Split",
    "Step",
    "StepError",
    "Transform",
    "attributes_of",
    "import_function",
]
