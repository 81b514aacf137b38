"""``python -m <repo_dir> run WORKFLOW.json ...`` - the PartID headless runner (see cli/runner.py).

Relative import on purpose: the repo folder is the package and its name varies
(PartID, main, ...). Nothing here may import torch or comfy.
"""
from .cli.runner import main

if __name__ == "__main__":
    raise SystemExit(main())
