"""Data the operator consults: the model preset catalog and the GPU SKU table.

Both are data files beside their loaders (STYLE.md: data in data files, not in code).
"""
