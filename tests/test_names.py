"""The shared names (mmcls.names), the backend registry (mmcls.deploy.backends) and the CLI choices drawn from them."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from mmcls import names
from mmcls.cli import build_parser
from mmcls.config import FrameConfig, TrainConfig
from mmcls.deploy import backends


def test_names_module_imports_only_typing():
    tree = ast.parse(Path(names.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported == {"typing"}


def test_registry_and_cli_are_cheap_to_import():
    """The registry names its exporters/runtimes by path; the CLI's parsers need neither torch nor deploy code."""
    code = (
        "import sys; import mmcls.deploy.backends; from mmcls.cli import build_parser; build_parser(); "
        "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'mmcls.deploy.predictor') "
        "if m in sys.modules); print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_registry_covers_every_backend_name():
    assert tuple(backends.BACKENDS) == names.BACKENDS == typing.get_args(names.Backend)
    assert (*backends.EXPORTABLE, names.TRITON_FORMAT) == names.EXPORT_FORMATS
    files = [info.model_file for info in backends.BACKENDS.values()]
    assert len(set(files)) == len(files)
    for name, info in backends.BACKENDS.items():
        assert info.name == name
        assert isinstance(info.runtime(), type)  # every dotted path resolves
        if info.exportable:
            assert callable(info.exporter())
        precisions = {*typing.get_args(names.Precision), *typing.get_args(names.Quantize)}
        assert set(info.cpu_precisions) <= set(info.precisions) <= precisions
        assert ("int8" in info.precisions) == (info.quantize_path is not None)
        if info.quantize_path is not None:
            assert callable(info.quantizer())
        assert set(info.devices) <= set(typing.get_args(names.Device)) - {"auto"}
    assert backends.BACKENDS["torch"].model_file == names.WEIGHTS_FILE
    assert backends.BACKENDS["torch"].precision_problem("fp16", "cpu") is not None
    assert backends.BACKENDS["tensorrt"].triton_platform == "tensorrt_plan"
    assert backends.BACKENDS["onnx"].precision_problem("fp16", "cpu") is None


def _choices(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, dict[str, tuple]]:
    """``{"mmcls predict": {"backend": choices, ...}, ...}`` over every (sub-)command."""
    found: dict[str, dict[str, tuple]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_choices(sub, f"{prefix} {name}".strip()))
        elif action.choices is not None:
            found.setdefault(prefix, {})[action.dest] = tuple(action.choices)
    return found


def test_cli_choices_come_from_the_config_and_the_registry():
    hints = typing.get_type_hints(TrainConfig)
    expected = {
        "precision": typing.get_args(hints["precision"]),
        "frame_decoder": typing.get_args(typing.get_type_hints(FrameConfig)["decoder"]),
        "backend": tuple(backends.BACKENDS),
        "fmt": (*backends.EXPORTABLE, "triton"),
    }
    seen = {key: 0 for key in expected}
    for command, options in _choices(build_parser()).items():
        for dest, choices in options.items():
            if dest in expected:
                assert choices == expected[dest], f"{command} --{dest}"
                seen[dest] += 1
            elif dest == "device":
                assert set(choices) <= set(typing.get_args(hints["device"])), command
    # predict/bench/serve/export --backend, predict/bench/ensemble/pseudo-label/extract-features/serve --precision
    assert seen["backend"] >= 4 and seen["precision"] >= 6 and seen["frame_decoder"] >= 3 and seen["fmt"] == 1


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_unknown_backend_is_refused_by_the_parser(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "model", "--backend", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
