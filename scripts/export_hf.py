"""The exporter moved to the kvtorch Python package: python -m kvtorch.export.
This path keeps working (with the package installed, or from a checkout)."""
import os
import sys

try:
    from kvtorch.export import main
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    from kvtorch.export import main

if __name__ == "__main__":
    main()
