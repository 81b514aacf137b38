"""(being written) ComfyUI glue for body parsing."""
NODES: list = []
