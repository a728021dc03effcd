"""A discrete-event simulator of a serving cluster, driven by costs measured on the real engine."""

from aruntime.sim.costs import Costs
from aruntime.sim.model import SLO, Layout, Prediction, SimConfig, predict
from aruntime.sim.trace import SimRequest, load_trace

__all__ = ["SLO", "Costs", "Layout", "Prediction", "SimConfig", "SimRequest", "load_trace",
           "predict"]
