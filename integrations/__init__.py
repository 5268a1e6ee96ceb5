"""Serving front ends beside the CLI (DESIGN §12): vLLM glue and the OpenAI-compatible prompt proxy.

They use the registry's client and its load-time description of a checkpoint, never the trainer. Extra ``serve``.
"""
