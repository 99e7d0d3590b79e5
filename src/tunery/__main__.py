"""`python -m tunery ...`, the same as the `tunery` command: what launchers start, e.g.
`torchrun --nproc_per_node 2 -m tunery train ...` or `accelerate launch -m tunery train ...`."""

from .cli import main

main()
