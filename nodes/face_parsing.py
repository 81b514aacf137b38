"""(being written) ComfyUI glue for face parsing."""
NODES: list = []
