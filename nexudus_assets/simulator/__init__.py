"""A Nexudus-compatible HTTP server with generated data, for tests and benchmarks.

    from nexudus_assets.simulator import Simulator, SimulatorServer

    sim = Simulator(seed=1, tokens=100)
    with SimulatorServer(sim) as server:
        ...  # talk to server.base_url

It shares the entity descriptions and models of `nexudus_assets.nexudus` but never the client.
"""

from nexudus_assets.simulator.core import Simulator
from nexudus_assets.simulator.dialect import DIALECTS, Dialect
from nexudus_assets.simulator.faults import Faults
from nexudus_assets.simulator.limits import Limits
from nexudus_assets.simulator.live import LiveChanges
from nexudus_assets.simulator.server import SimulatorServer
from nexudus_assets.simulator.sign_in import DEFAULT_PASSWORD, DEFAULT_USERNAME

__all__ = [
    "DEFAULT_PASSWORD",
    "DEFAULT_USERNAME",
    "DIALECTS",
    "Dialect",
    "Faults",
    "Limits",
    "LiveChanges",
    "Simulator",
    "SimulatorServer",
]
