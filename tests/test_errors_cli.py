"""The one error path of the command-line tools (`abaw_jax.runtime.errors.run`) and the tools that use it.

A known error is ONE line `error: ...` on stderr that names the file or key, with exit status 2 for usage
and config, 1 for the rest; a bug keeps its traceback; ABAW_JAX_TRACEBACK=1 or --verbosity=1 adds the
traceback to a known error. New tools add a case to `test_tools_print_one_error_line` below.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from abaw_jax import convert_weights
from abaw_jax.models import torch_weights as tw
from abaw_jax.runtime import errors
from abaw_jax.torch_compat import prepare_torch_imports

prepare_torch_imports()
import torch  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

TOOL = textwrap.dedent("""
    import errno, sys
    from absl import flags
    from abaw_jax.runtime import errors

    _RAISE = flags.DEFINE_string("raise", "", "What to raise.")

    def main(argv):
        kind = _RAISE.value
        if kind == "job":
            raise errors.JobError("the data in /data/x is bad;\\n  fix it and rerun")
        if kind == "config":
            raise errors.ConfigError("config.batch_size must be an integer >= 1, got 0")
        if kind == "missing":
            open("/nonexistent/file.txt")
        if kind == "directory":
            open(sys.argv[0].rsplit("/", 1)[0], "w")
        if kind == "full_disk":
            raise OSError(errno.ENOSPC, "No space left on device", "/ckpt/step_6")
        if kind == "bug":
            raise ValueError("a bug: keep my traceback")
        print("done")
""")


def run_tool(tmp_path, *args, env=None):
    script = tmp_path / "tool.py"
    script.write_text(TOOL + "\nerrors.run(main)\n")
    environment = {k: v for k, v in os.environ.items() if k != errors.TRACEBACK_ENV}
    environment.update(env or {}, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=environment)


@pytest.mark.parametrize(
    "kind,code,line",
    [
        ("job", 1, "error: the data in /data/x is bad; fix it and rerun"),
        ("config", 2, "error: config.batch_size must be an integer >= 1, got 0"),
        ("missing", 1, "error: /nonexistent/file.txt: No such file or directory"),
        ("full_disk", 1, "error: /ckpt/step_6: No space left on device"),
    ],
)
def test_known_errors_are_one_line_with_their_exit_status(tmp_path, kind, code, line):
    result = run_tool(tmp_path, f"--raise={kind}")
    assert result.returncode == code
    assert result.stderr.strip().splitlines() == [line]


def test_a_directory_where_a_file_is_expected_names_it(tmp_path):
    result = run_tool(tmp_path, "--raise=directory")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path}: Is a directory"]


def test_a_bug_keeps_its_traceback(tmp_path):
    result = run_tool(tmp_path, "--raise=bug")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "ValueError: a bug: keep my traceback"


@pytest.mark.parametrize("how", ["env", "verbosity"])
def test_traceback_on_request_for_a_bug_report(tmp_path, how):
    args, env = (
        (["--raise=job"], {errors.TRACEBACK_ENV: "1"}) if how == "env" else (["--raise=job", "--verbosity=1"], None)
    )
    result = run_tool(tmp_path, *args, env=env)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and 'raise errors.JobError("the data' in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: the data in /data/x is bad; fix it and rerun"


def test_bad_flags_are_usage_errors(tmp_path):
    result = run_tool(tmp_path, "--raisee=job")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: Unknown command line flag 'raisee'. Did you mean: raise ? (see --helpshort)"
    ]
    assert run_tool(tmp_path).stdout == "done\n"


def test_explain_covers_the_domain_errors():
    from abaw_jax.data import affwild2
    from abaw_jax.runtime import checkpointing

    for error in (
        affwild2.AnnotationError("a.txt", 3, "one integer", "x"),
        affwild2.LayoutError("crops: bad"),
        checkpointing.CheckpointMismatchError("other model"),
        tw.WeightMismatchError("missing: x"),
        tw.WeightFileError("w.pth: a git-lfs pointer"),
    ):
        assert errors.explain(error) == (str(error), 1)
    assert errors.explain(errors.ConfigError("config.x")) == ("config.x", 2)
    assert errors.explain(KeyError("x")) is None and errors.explain(TypeError("x")) is None


def test_weight_files_that_are_not_weights(tmp_path):
    lfs = tmp_path / "lfs.pth"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 343000000\n")
    with pytest.raises(tw.WeightFileError, match=r"lfs\.pth: a git-lfs pointer, not the weights; .*git lfs pull"):
        tw.load_torch_checkpoint(str(lfs))

    state = {"cls_token": torch.zeros(1, 1, 8), "pos_embed": torch.ones(1, 5, 8)}
    good = tmp_path / "good.pth"
    torch.save({"model": state}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(tw.WeightFileError, match=r"cut\.pth: not a readable PyTorch checkpoint \(.*is it complete"):
        tw.load_torch_checkpoint(str(cut))

    no_model = tmp_path / "trainer_state.pth"
    torch.save({"optimizer": {"lr": 0.1}, "epoch": 3}, no_model)
    with pytest.raises(
        tw.WeightFileError,
        match=r"expected a state dict of tensors, or one under 'model', found "
        r"entries that are not tensors \(epoch, optimizer\)",
    ):
        tw.load_torch_checkpoint(str(no_model))

    state["pos_embed"][0, 2, 3] = float("nan")
    nan = tmp_path / "nan.pth"
    torch.save({"model": state}, nan)
    with pytest.raises(tw.WeightFileError, match=r"nan\.pth: 1 tensor\(s\) hold NaN or infinity \(pos_embed\)"):
        tw.load_torch_checkpoint(str(nan))
    np.testing.assert_array_equal(tw.load_torch_checkpoint(str(good))["pos_embed"], np.ones((1, 5, 8)))

    folder = tmp_path / "hf_model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": broken json')
    with pytest.raises(tw.WeightFileError, match=r"model\.safetensors: not a readable safetensors file"):
        tw.read_state_dict(str(folder), "hf")


def test_tools_print_one_error_line(tmp_path):
    """Each command-line tool, fed one bad input: one line naming the file or key, the right exit status."""
    lfs = tmp_path / "mae.pth"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n")
    (tmp_path / "out_dir").mkdir()
    cases = [
        (
            ["abaw_jax.main", "--config=configs/mae.py:tiny", f"--workdir={tmp_path / 'w'}", "--config.batch_sise=8"],
            2,
            'error: unknown config key batch_sise. Did you mean "batch_size" instead of "batch_sise"? '
            "(see --helpshort)",
        ),
        (
            ["abaw_jax.convert_weights", "--direction=to_flax", f"--input={lfs}", f"--output={tmp_path / 'o'}"],
            1,
            f"error: {lfs}: a git-lfs pointer, not the weights; fetch them with `git lfs pull` in that repository",
        ),
        (
            [
                "data_prep.build_face_shards",
                f"--image_roots=faces={tmp_path / 'nothing'}",
                f"--data_dir={tmp_path / 'tfds'}",
            ],
            1,
            f"error: Image root faces={tmp_path / 'nothing'} must be a directory, found nothing there.",
        ),
    ]
    env = {k: v for k, v in os.environ.items() if k != errors.TRACEBACK_ENV}
    for args, code, line in cases:
        result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, env=env)
        assert result.returncode == code, (args, result.stderr[-2000:])
        assert result.stderr.strip().splitlines()[-1] == line
        assert "Traceback" not in result.stderr, args


def test_damaged_params_directory_names_it(tmp_path):
    from abaw_jax.models import params_io
    from abaw_jax.models.vit import ViTConfig

    config = ViTConfig(image_size=16, patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64)
    params_io.save_params(str(tmp_path / "enc"), params_io.init_params(config), config)
    largest = max((tmp_path / "enc" / "params").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    largest.write_bytes(largest.read_bytes()[:100])
    with pytest.raises(
        params_io.ParamsFileError,
        match=f"{tmp_path / 'enc' / 'params'}: cannot restore the parameters of the model in model.json",
    ):
        params_io.load_params(str(tmp_path / "enc"))


def test_output_that_is_a_directory_is_named(tmp_path):
    with pytest.raises(IsADirectoryError) as caught:
        convert_weights.convert_to_official(str(tmp_path / "params"), str(tmp_path))
    assert errors.explain(caught.value) == (
        f"{tmp_path}: is a directory; --output of to_official names the .pth file to write",
        1,
    )
