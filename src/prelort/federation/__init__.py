"""One federated round in three parts that every engine wires: a plan, a client step, a server step.

``plan`` derives from the config who holds which rows at which rank and who takes part in each
round; ``client`` turns a received prefix into a reply (model and data, no aggregation);
``server`` turns the replies into the next global adapter and the round's record (no model, no
data). The in-process simulation and the Flower app call these same functions.
"""

from prelort.federation.client import ClientReply, client_step
from prelort.federation.plan import FederationPlan, assign_ranks, build_plan
from prelort.federation.records import Rejection, RoundRecord, SegmentRecord, TrafficRecord
from prelort.federation.server import RoundOutcome, ServerRules, ServerState, server_step

__all__ = [
    "ClientReply",
    "FederationPlan",
    "Rejection",
    "RoundOutcome",
    "RoundRecord",
    "SegmentRecord",
    "ServerRules",
    "ServerState",
    "TrafficRecord",
    "assign_ranks",
    "build_plan",
    "client_step",
    "server_step",
]
