"""dab_core: Differentiable Approximation Bridges in pure PyTorch.

Public API: `DAB` (the bridge module), `hard_functions` (the registry of hard functions),
`run_trial` (one trial of any registered experiment family from a plain config dict), and
`experiments` (the registry of experiment families). The registry of gradient estimators is
``dab_core.estimators.estimators`` (not re-exported here: the name would hide its module).
Nothing here imports Ray, MLflow or FastAPI.
"""

from dab_core.approximators import DenseApproximator, ElementwiseApproximator
from dab_core.bridge import DAB, DAB_LOSSES, ESTIMATORS, dab_loss_of, strip_approximators
from dab_core.estimators import EstimatorDef
from dab_core.experiments import ExperimentFamily, experiments, parse_config
from dab_core.hard import BoundHardFunction, hard_functions
from dab_core.registry import Registry, UnknownNameError
from dab_core.training import Task, run_trial

__version__ = "0.1.0"

__all__ = [
    "DAB",
    "DAB_LOSSES",
    "ESTIMATORS",
    "BoundHardFunction",
    "DenseApproximator",
    "ElementwiseApproximator",
    "EstimatorDef",
    "ExperimentFamily",
    "Registry",
    "Task",
    "UnknownNameError",
    "__version__",
    "dab_loss_of",
    "experiments",
    "hard_functions",
    "parse_config",
    "run_trial",
    "strip_approximators",
]
