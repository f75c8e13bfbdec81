"""In-process federation: one run, its outputs, and comparisons of methods over seeds."""

from prelort.federation.plan import assign_ranks
from prelort.runtime.result import SimulationResult
from prelort.runtime.workbench import Workbench, build_workbench
from prelort.simulation.run import run_simulation

__all__ = ["SimulationResult", "Workbench", "assign_ranks", "build_workbench", "run_simulation"]
