"""In-process federation: one run, its outputs, and comparisons of methods over seeds."""

from prelort.federation.plan import assign_ranks
from prelort.simulation.result import SimulationResult
from prelort.simulation.run import run_simulation
from prelort.simulation.workbench import Workbench, build_workbench

__all__ = ["SimulationResult", "Workbench", "assign_ranks", "build_workbench", "run_simulation"]
