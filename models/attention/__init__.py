"""Decoupled identity attention shared by the ConsistentID and Visual Persona apply nodes (no ComfyUI imports)."""
