"""In-process federation: one run, its outputs, and comparisons of methods over seeds."""

from prelort.simulation.run import SimulationResult, assign_ranks, run_simulation
from prelort.simulation.workbench import Workbench, build_workbench

__all__ = ["SimulationResult", "Workbench", "assign_ranks", "build_workbench", "run_simulation"]
