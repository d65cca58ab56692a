"""`detforge compare`: which model for this data on this device. Trains (or takes) several
models, scores them with one evaluator, times their exports in one interleaved session, and
writes the table, the accuracy-latency Pareto front and a recommendation."""

from detforge.compare.commands import compare_command, run_compare
from detforge.compare.plan import CompareSettings, run_state
from detforge.compare.ranking import mean_ranks, pareto_front, recommend

__all__ = ["CompareSettings", "compare_command", "mean_ranks", "pareto_front", "recommend", "run_compare",
           "run_state"]
