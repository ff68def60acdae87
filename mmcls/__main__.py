"""``python -m mmcls`` is the CLI, so that ``torchrun -m mmcls train ...`` works."""

from mmcls.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
