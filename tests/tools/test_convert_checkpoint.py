"""tools/convert_checkpoint.py: an official fixture checkpoint (nested, 'module.' prefixed) converted to safetensors
reproduces the official outputs when loaded into a fresh model; bad input gives one error line and exit status 2."""
import json

import torch
from safetensors.torch import load_file

from tests.models.contract import load_case
from vssm.convert import _BUILDERS

from .helpers import load_tool

CASE = ("vim", "vim_midcls_v2_div2")


def _official_checkpoint(tmp_path):
    meta, weights, io = load_case(*CASE)
    path = tmp_path / "official.pth"
    torch.save({"model": {f"module.{key}": value for key, value in weights.items()}, "epoch": 300}, path)
    config = tmp_path / "official.json"
    config.write_text(json.dumps(meta))
    return meta, io, path, config


def test_converted_file_reproduces_official_outputs(tmp_path, capsys):
    meta, io, checkpoint, config = _official_checkpoint(tmp_path)
    out = tmp_path / "vim.safetensors"
    tool = load_tool("convert_checkpoint")
    assert tool.main(["--official-config", str(config), str(checkpoint), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and not (tmp_path / "vim.safetensors.tmp").exists()
    module, _ = _BUILDERS[meta["family"]](dict(meta["kwargs"]), meta["official_entry"].split("::")[-1])
    module.load_state_dict(load_file(str(out)), strict=True)
    with torch.no_grad():
        logits = module.eval()(io["input"])
    torch.testing.assert_close(logits, io["output"], atol=meta["suggested_atol"], rtol=meta["suggested_rtol"])


def test_bad_input_is_one_error_line(tmp_path, capsys):
    meta, io, checkpoint, config = _official_checkpoint(tmp_path)
    tool = load_tool("convert_checkpoint")
    cases = [
        (["--official-config", str(config), str(tmp_path / "missing.pth"), str(tmp_path / "o.safetensors")],
         "checkpoint not found"),
        (["no_such_model", str(checkpoint), str(tmp_path / "o.safetensors")], "unknown model 'no_such_model'"),
        (["vim_tiny_patch16_224", str(checkpoint), str(tmp_path / "o.safetensors")], "does not fit model"),
    ]
    for argv, message in cases:
        assert tool.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err
        assert not (tmp_path / "o.safetensors").exists()
