"""PartID engine: plain PyTorch, no ComfyUI imports, testable anywhere."""
