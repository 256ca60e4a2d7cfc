import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TESTDATA = os.path.join(ROOT, "testdata")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))  # refmodel.py, a dev tool

import torch  # noqa: E402

# Run TorchScript files as plain graphs: the profiling executor re-specialises
# them for every new sequence length, which makes the reference computations
# several times slower (kvtorch does the same, see calibration/model.go).
torch._C._set_graph_executor_optimize(False)
