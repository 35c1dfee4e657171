"""The seam between hf-unlearn and the internals of the libraries it builds on: one module per library.

Every use of a private or version-dependent API of transformers, accelerate, DeepSpeed, peft or torch lives here and
nowhere else in `hf_unlearn`, with the versions it was checked against. When an upgrade removes one, the failure
names this package, and `tests/integrations/` checks every listed internal against the installed versions.

Checked against: transformers 5.24, accelerate 1.15, deepspeed 0.19.8, peft 0.21.2, torch 2.13.

Each module's `INTERNALS` lists ``(import path of the owner, attribute)`` for every private or version-dependent
name it reads; the functions around them are what the rest of the library calls.
"""
