"""Official checkpoint layouts, generated from each model's configuration.

A layout is `{key: shape}` for every tensor of an official file. Layouts serve two purposes:
recognising a user's file exactly (formats.py) and writing random-weight files in the official
format for tests and benchmarks. Tests compare them with the shapes the official classes produce.
"""
