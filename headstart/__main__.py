"""``python -m headstart``: the CLI, as torchrun launches it (``torchrun ... -m headstart fit ...``)."""

from headstart.cli import main

main()
