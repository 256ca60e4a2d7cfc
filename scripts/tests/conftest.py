import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # scripts/
sys.path.insert(0, HERE)
ROOT = os.path.dirname(os.path.dirname(HERE))
TESTDATA = os.path.join(ROOT, "testdata")

import torch  # noqa: E402

# Run TorchScript files as plain graphs: the profiling executor re-specialises
# them for every new sequence length, which makes the reference computations
# several times slower (kvtorch does the same, see calibration/model.go).
torch._C._set_graph_executor_optimize(False)
