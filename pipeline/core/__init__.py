"""The shared core: settings, errors, storage, status, chunk planning, key layout, request specs.

Imported by every layer above it; imports none of them, and never torch, decord, transformers or av.
"""
