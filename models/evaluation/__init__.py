"""Evaluation of identity-preserving generations: FaceSim, CLIP-I, CLIP-T, DINO, FGIS proxy, per-part.

Plain torch / transformers / onnxruntime; no ComfyUI. metrics.py defines each metric and its model;
pairing.py reads a manifest or pairs two folders; run.py evaluates pairs; report.py writes the CSV and
summary; setup.py finds the models in a ComfyUI models folder.
"""
