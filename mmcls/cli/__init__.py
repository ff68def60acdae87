"""The ``mmcls`` command line (also ``python -m mmcls``, which is what ``torchrun -m mmcls`` runs).

A thin registry: :data:`COMMANDS` maps each sub-command to the module that defines it. Every such module has
``add_parser(subparsers)`` (argparse only, cheap to import) and ``run(args) -> int``, whose heavy imports
(torch, transformers, open_clip, onnxruntime, Triton) happen inside ``run``, so ``mmcls --help`` and
``mmcls evaluate`` stay quick. A command whose body belongs to a feature package lives there (the deployment
commands in ``mmcls.deploy``, pretraining in ``mmcls.pretrain``). The core imports those packages only by name
and only when reached: through this table, and where a command is given an exported artifact (``predict``,
``bench infer --backend``, an ``ensemble`` member).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import NoReturn

from mmcls import __version__

# command name -> module with add_parser(sub) and run(args). Order = order in ``mmcls --help``.
COMMANDS: dict[str, str] = {
    "make-data": "mmcls.cli.make_data",
    "train": "mmcls.cli.train",
    "pretrain": "mmcls.pretrain.cli",
    "evaluate": "mmcls.cli.evaluate",
    "predict": "mmcls.cli.predict",
    "kfold": "mmcls.cli.kfold",
    "ensemble": "mmcls.cli.ensemble",
    "stack": "mmcls.cli.stack",
    "pseudo-label": "mmcls.cli.pseudo_label",
    "group-finetune": "mmcls.cli.group_finetune",
    "tune": "mmcls.cli.tune",
    "demo": "mmcls.cli.demo",
    "info": "mmcls.cli.info",
    "export": "mmcls.deploy.cli_export",
    "serve": "mmcls.deploy.cli_serve",
    "client": "mmcls.deploy.cli_client",
    "extract-features": "mmcls.cli.extract_features",
    "bench": "mmcls.cli.bench",
}


class OneLineErrorParser(argparse.ArgumentParser):
    """An argparse parser whose refusals are one line, like every other refusal of the CLI.

    argparse prints the whole usage (dozens of options for ``predict``) above its error; the error line and
    a pointer to ``--help`` say the same in one line. Sub-command parsers inherit the class.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="mmcls",
        description="Multimodal short-video classification: frames + title/ASR/OCR -> hierarchical category.",
        epilog="mmcls COMMAND --help shows a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"mmcls {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = module.add_parser(sub)
        assert command_parser.prog.endswith(name), f"{module_name} registered {command_parser.prog!r}"
        command_parser.set_defaults(run=module.run)
    return parser


def _setup_logging(verbose: bool) -> None:
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None else ""
    # Libraries (open_clip logs to the root logger) speak at WARNING; mmcls's own progress at INFO.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("mmcls").setLevel(logging.DEBUG if verbose else logging.INFO)
    # DataLoader workers fork after the fast tokenizer has run; its thread pool must not be inherited.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from mmcls.errors import USER_ERRORS

    try:
        return args.run(args)
    except USER_ERRORS as exc:
        if args.verbose:
            raise
        # Bad input (a malformed record, a missing file, a wrong config key): one clear line, no traceback.
        print(f"mmcls {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
