"""Headless runner for PartID workflows.

``python -m <repo_dir> run WORKFLOW.json ...`` submits an API-format workflow to a
ComfyUI server (starting a local one if none answers) and downloads the outputs.

Modules:
  * ``cli.runner``   - command line, exit codes, server check/launch, timeout/cancel handling
  * ``cli.client``   - ComfyUI HTTP/websocket protocol: upload, submit, stream events, download
  * ``cli.workflow`` - loading and editing API-format workflows (pure functions)
  * ``cli.server``   - ``ComfyServer`` (start/wait/stop a ComfyUI process) and ``find_comfyui``
  * ``cli.ui_workflow`` - API-format <-> UI-format workflows (the workflows/ twins)
  * ``cli.evaluate`` / ``cli.train`` - the evaluation script and the headless (torchrun) trainer

The runner modules (runner, client, workflow, server, ui_workflow) import neither torch nor comfy: the
runner must stay light enough to run next to (not inside) a ComfyUI process. evaluate and train run the
engine (and train ComfyUI itself) in-process.
"""
