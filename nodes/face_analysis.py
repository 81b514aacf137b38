"""(being written) ComfyUI glue for face analysis."""
NODES: list = []
