"""Typed, frozen stage configs (one module per stage), re-exported here.

Each stage module defines its config class; ``PipelineConfig`` composes them and offers
named presets (``tiny``, ``tokalign``, ``tokalign++``, ``paper-scale``).
"""
