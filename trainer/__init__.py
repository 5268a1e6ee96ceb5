"""ctpreg's trainer: load and compress models, build data windows, learn soft prompts, evaluate them honestly.

Needs the ``train`` extra (torch 2.13.0, transformers, GPTQModel, bitsandbytes, llmcompressor). Heavy libraries are
imported inside the functions that use them, so importing this package stays cheap.
"""
