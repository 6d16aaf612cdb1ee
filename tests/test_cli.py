"""Bad input ends in one clear line and a non-zero exit, and never destroys a job."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from onecomp.cli import main


def run_cli_streams(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The exit code, stdout and stderr of ``onecomp ARGS`` run in this process."""
    capsys.readouterr()  # drop what fixtures printed
    old = sys.argv
    sys.argv = ["onecomp", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code, out, err = run_cli_streams(args, capsys)
    return code, out + err


def assert_one_line_error(code: int, output: str, needle: str) -> None:
    assert code != 0
    assert "Traceback" not in output
    assert needle in output, output
    assert output.strip().startswith("error:"), output


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    from tests.conftest import tiny_model

    d = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(d)
    return d


def test_unknown_model(capsys, tmp_path) -> None:
    code, out = run_cli(["compress", "no-such-model", "-o", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, out, "unknown model 'no-such-model'")
    assert not (tmp_path / "o").exists()


def test_hub_id_offline_fails_fast(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out = run_cli(["compress", "someorg/not-cached-model", "-o", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, out, "no access to the Hugging Face hub")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--bits", "5"], "bits must be one of"),
        (["--group-size", "0"], "group size must be a positive integer or -1"),
        (["--group-size", "-7"], "group size must be a positive integer or -1"),
        (["--method", "magic"], "unknown method 'magic'"),
        (["--nsamples", "0"], "calib.nsamples"),
        (["--bpw", "3", "--bits", "3"], "--bits and --bpw both set the formats"),
        (["--memory", "lots"], "--memory takes a number of GB or 'auto'"),
        (["--bpw", "0.5"], "the budget (0.5 bits per weight) is below what any plan can reach"),
        (["--plan", "/nonexistent/plan.json"], "cannot read plan"),
        (["--stages", "global,layerwise"], "each stage at most once, in the order layerwise, blockwise, global"),
        (["--stages", "blockwise"], "start with 'layerwise' or pass --from-pivot"),
        (["--stages", "magic"], "stages.0: Input should be 'layerwise', 'blockwise' or 'global'"),
        (["--bits", "1.5"], "integer formats take whole bits (2, 3, 4 or 8), not 1.5"),
        (["--method", "lords", "--group-size", "-1"], "lords sizes its low-rank scale by a block size"),
        (["--method", "dbf", "--bits", "0.2"], "cannot hold one sign path"),
    ],
)
def test_invalid_options(capsys, tmp_path, tiny_model_dir, args, needle) -> None:
    code, out = run_cli(["compress", str(tiny_model_dir), "-o", str(tmp_path / "o"), *args], capsys)
    assert_one_line_error(code, out, needle)
    assert not (tmp_path / "o").exists()


def test_unreadable_calibration_file(capsys, tmp_path, tiny_model_dir) -> None:
    code, out = run_cli(["compress", str(tiny_model_dir), "-o", str(tmp_path / "o"), "--calib", str(tmp_path / "missing.txt")], capsys)
    assert_one_line_error(code, out, "missing.txt")


def test_existing_job_is_kept_without_overwrite(capsys, tmp_path, tiny_model_dir) -> None:
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / "job.yaml").write_text("model: other\n")
    code, out = run_cli(["compress", str(tiny_model_dir), "-o", str(out_dir)], capsys)
    assert_one_line_error(code, out, "already holds a job")
    assert (out_dir / "job.yaml").read_text() == "model: other\n"


def test_foreign_directory_is_never_overwritten(capsys, tmp_path, tiny_model_dir) -> None:
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / "precious.txt").write_text("keep me")
    code, out = run_cli(["compress", str(tiny_model_dir), "-o", str(out_dir), "--overwrite"], capsys)
    assert_one_line_error(code, out, "not a onecomp job directory")
    assert (out_dir / "precious.txt").read_text() == "keep me"


def test_no_space_to_write(capsys, tmp_path, tiny_model_dir, monkeypatch) -> None:
    import shutil as _shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(_shutil, "disk_usage", lambda _p: usage(10**6, 10**6 - 1000, 1000))
    code, out = run_cli(["compress", str(tiny_model_dir), "-o", str(tmp_path / "o"), "--calib", "pydoc", "--eval", "none"], capsys)
    assert_one_line_error(code, out, "not enough disk space")


def test_batch_of_a_missing_file(capsys, tmp_path) -> None:
    code, out = run_cli(["batch", str(tmp_path / "b.yaml")], capsys)
    assert_one_line_error(code, out, "cannot read batch file")


def test_resume_of_a_directory_without_a_job(capsys, tmp_path) -> None:
    code, out = run_cli(["resume", str(tmp_path)], capsys)
    assert_one_line_error(code, out, "holds no onecomp job to resume")


def test_help_lists_defaults(capsys) -> None:
    code, out = run_cli(["compress", "--help"], capsys)
    assert code == 0
    assert "(default: 128)" in out and "--group-size" in out


def test_inspect_prints_model_and_hardware(capsys, tiny_model_dir) -> None:
    code, out = run_cli(["inspect", str(tiny_model_dir)], capsys)
    assert code == 0, out
    for needle in ("LlamaForCausalLM", "self_attn.q_proj", "RAM", "host peak", "layerwise", "blockwise", "global", "evaluate pivots"):
        assert needle in out


def test_inspect_json(capsys, tiny_model_dir) -> None:
    import json

    code, out = run_cli(["inspect", str(tiny_model_dir), "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["model"]["num_blocks"] == 2 and data["estimate"]["host_peak_bytes"] > 0
    assert set(data["fits"]) == set(data["estimate"]["phases"]) >= {"layerwise", "blockwise", "global"}


LLAMA3_70B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
    "num_attention_heads": 64, "num_hidden_layers": 80, "num_key_value_heads": 8, "vocab_size": 128256,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
}


def test_inspect_plans_a_config_only_model_for_another_machine(capsys, tmp_path) -> None:
    """No weights needed: the config alone sizes every phase; --gpu-memory and
    --host-memory say whether each fits that machine."""
    import json

    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_70B))
    code, out = run_cli(["inspect", str(tmp_path), "--gpu-memory", "24", "--host-memory", "64", "--json"], capsys)
    assert code == 0, out
    data = json.loads(out)
    assert data["model"]["total_params"] == pytest.approx(70.55e9, rel=0.01)
    assert data["machine"] == {"host_bytes": 64 * 2**30, "gpu_bytes": 24 * 2**30, "given": True}
    phases = data["estimate"]["phases"]
    assert list(phases) == ["evaluate the original", "layerwise", "blockwise", "global", "evaluate pivots"]
    assert all(p["device"] > 0 for p in phases.values())  # planned for a GPU although this machine may have none
    # the original is scored block by block (perplexity and lm-eval tasks): it fits a small workstation
    assert data["fits"]["evaluate the original"] and not data["fits"]["global"]
    # on a larger one, so do the streamed stages; the global stage's whole student with its training views does not
    code, out = run_cli(["inspect", str(tmp_path), "--gpu-memory", "80", "--host-memory", "256", "--eval", "builtin", "--json"], capsys)
    assert code == 0, out
    data = json.loads(out)
    fits = data["fits"]
    assert fits["evaluate the original"] and fits["layerwise"] and fits["blockwise"] and not fits["global"]
    code, out = run_cli(["inspect", str(tmp_path), "--gpu-memory", "80", "--host-memory", "256", "--stages", "layerwise"], capsys)
    assert code == 0, out
    assert "given machine" in out and "layerwise" in out and "blockwise" not in out


def test_inspect_refuses_a_non_positive_memory(capsys, tiny_model_dir) -> None:
    code, out = run_cli(["inspect", str(tiny_model_dir), "--gpu-memory", "0"], capsys)
    assert_one_line_error(code, out, "--gpu-memory must be a positive number of GiB")


def test_job_that_does_not_fit_is_refused_up_front(capsys, tmp_path, tiny_model_dir, monkeypatch) -> None:
    import onecomp.pipeline as pipeline
    from onecomp.hardware import detect_hardware

    real = detect_hardware()
    real.ram_available_bytes = 2**20
    monkeypatch.setattr(pipeline, "detect_hardware", lambda: real)
    code, out = run_cli(["compress", str(tiny_model_dir), "-o", str(tmp_path / "o"), "--calib", "pydoc", "--eval", "none"], capsys)
    assert_one_line_error(code, out, "of host memory but only 0.0 GiB is available")
    assert not (tmp_path / "o" / "pivots").exists()


@pytest.mark.parametrize("flag, enabled", [("--qep", True), ("--no-qep", False), (None, True)])
def test_qep_switch_reaches_the_job(capsys, tmp_path, tiny_smollm_dir, flag, enabled) -> None:
    import yaml

    out = tmp_path / "o"
    args = ["compress", str(tiny_smollm_dir), "--bits", "4", "--nsamples", "4", "--seqlen", "16", "--eval", "none", "-o", str(out)]
    code, output = run_cli(args + ([flag] if flag else []), capsys)
    assert code == 0, output
    job = yaml.safe_load((out / "job.yaml").read_text())
    assert job["quant"]["qep"]["enabled"] is enabled
    layers = json.loads((out / "logs" / "layers.json").read_text())
    assert all(("qep_alpha" in layer) is enabled for layer in layers)


@pytest.mark.parametrize(
    "args, method, bits, label",
    [
        (["--method", "mdbf", "--bits", "3.5"], "mdbf", 3.5, "mdbf3.5e1p4"),
        (["--method", "dbf"], "dbf", None, "dbf2"),
        (["--method", "lords", "--bits", "4", "--group-size", "32"], "lords", 4, "lords4g32nf"),
    ],
)
def test_seed_methods_from_the_command_line(capsys, tmp_path, tiny_smollm_dir, monkeypatch, args, method, bits, label) -> None:
    import yaml

    monkeypatch.chdir(tmp_path)
    fast = tmp_path / "fast.yaml"
    fast.write_text(yaml.safe_dump({"quant": {"options": {"iterations": 1}}}))
    cmd = ["compress", str(tiny_smollm_dir), *args, "--nsamples", "4", "--seqlen", "16", "--eval", "none", "--config", str(fast)]
    code, output = run_cli(cmd, capsys)
    assert code == 0, output
    out = tmp_path / "onecomp-out" / f"{tiny_smollm_dir.name}-{method}-{label}"
    job = yaml.safe_load((out / "job.yaml").read_text())
    assert job["quant"]["method"] == method and job["quant"]["bits"] == bits
    layers = json.loads((out / "pivots" / "1-layerwise" / "config.json").read_text())["quantization_config"]["layers"]
    assert {f["format"] for f in layers.values()} == {"lords" if method == "lords" else "signfactor"}


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--bogus"], "No such option: --bogus"),
        (["compress", "m", "--nope"], "No such option: --nope"),
        (["compress", "m", "--bits", "abc"], "Invalid value for '--bits'"),
        (["frob"], "No such command 'frob'"),
        (["eval"], "Missing argument 'checkpoint'"),
    ],
)
def test_usage_errors_are_one_line(capsys, args, needle) -> None:
    code, out = run_cli(args, capsys)
    assert code == 2
    assert_one_line_error(code, out, needle)
    assert len(out.strip().splitlines()) == 1, out
    assert "--help" in out


def test_usage_error_from_the_real_entry_point() -> None:
    import subprocess

    res = subprocess.run([sys.executable, "-m", "onecomp.cli", "compress", "m", "--bits", "abc"], capture_output=True, text=True)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and res.stderr.startswith("error: Invalid value for '--bits'"), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_no_arguments_prints_the_help(capsys) -> None:
    code, out = run_cli([], capsys)
    assert code == 2  # click's convention for a command given nothing to do
    assert "Traceback" not in out and "compress" in out and "Usage" in out


def test_version(capsys) -> None:
    from onecomp import __version__

    code, out = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"onecomp {__version__}"


# Run in a subprocess: the CLI, with block 1 of the layer-wise stage held until a real SIGINT lands.
_HOLD_BLOCK_1 = """
import sys, time
from pathlib import Path
import onecomp.stages.layerwise as layerwise
from onecomp.cli import main

flag = Path(sys.argv.pop(1))
original = layerwise._quantize_block

def held(block, index, *args, **kwargs):
    if index == 1:
        flag.write_text("holding")
        time.sleep(600)
    return original(block, index, *args, **kwargs)

layerwise._quantize_block = held
sys.argv[0] = "onecomp"
main()
"""


def test_ctrl_c_exits_130_with_the_resume_line_and_resume_is_exact(capsys, tmp_path, tiny_smollm_dir) -> None:
    import signal
    import subprocess
    import time

    import torch
    from safetensors.torch import load_file

    job = ["--bits", "3", "--group-size", "32", "--nsamples", "8", "--seqlen", "64", "--eval", "none"]
    out, flag = tmp_path / "stopped", tmp_path / "holding"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_BLOCK_1, str(flag), "compress", str(tiny_smollm_dir), *job, "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 300
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped: interrupted") and f"onecomp resume {out}" in last, err
    state = json.loads((out / "state.json").read_text())
    assert state["progress"]["layerwise"]["blocks_done"] == 1 and not state.get("complete")

    code, text = run_cli(["resume", str(out)], capsys)
    assert code == 0, text
    code, text = run_cli(["compress", str(tiny_smollm_dir), *job, "-o", str(tmp_path / "whole")], capsys)
    assert code == 0, text
    resumed = load_file(str(out / "pivots" / "1-layerwise" / "model.safetensors"))
    whole = load_file(str(tmp_path / "whole" / "pivots" / "1-layerwise" / "model.safetensors"))
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)



def test_help_has_panels_and_one_style_of_default(capsys) -> None:
    code, out = run_cli(["compress", "--help"], capsys)
    assert code == 0
    for panel in ("Format", "Method", "Calibration", "Evaluation", "Job"):
        assert f"─ {panel} ─" in out, panel
    assert "gptq + QEP" in out and "--no-qep" in out
    for command in ("compress", "eval", "inspect", "plan", "resume", "batch"):
        code, out = run_cli([command, "--help"], capsys)
        assert code == 0 and "[default" not in out, command


def test_eval_takes_the_options_of_compress_and_the_older_spelling(capsys, tmp_path, tiny_smollm_dir) -> None:
    common = ["eval", str(tiny_smollm_dir), "--seqlen", "32", "--max-windows", "2", "--device", "cpu"]
    code, text = run_cli([*common, "--eval", "pydoc", "--eval-limit", "3", "-o", str(tmp_path / "new.json")], capsys)
    assert code == 0, text
    code, text = run_cli([*common, "--ppl", "pydoc", "--limit", "3", "-o", str(tmp_path / "old.json")], capsys)
    assert code == 0, text
    new, old = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("new", "old"))
    assert new == old and "ppl_pydoc" in new["metrics"]
    code, text = run_cli([*common, "--eval", "pydoc", "--ppl", "builtin"], capsys)
    assert_one_line_error(code, text, "older spelling of --eval")
    code, text = run_cli(["eval", "--help"], capsys)
    assert "--eval-limit" in text and "--ppl" not in text and "--limit " not in text


def test_eval_of_a_plain_model_streams_it_with_the_same_scores(capsys, tmp_path, tiny_smollm_dir, monkeypatch) -> None:
    """A plain model is scored block by block (never loaded whole), with the scores of the whole model in memory."""
    import torch
    import transformers

    from onecomp import checkpoint
    from onecomp.config import EvalConfig
    from onecomp.eval.suite import evaluate
    from onecomp.reporter import NullReporter

    whole_load = checkpoint.load

    def refuse(*args, **kwargs):
        raise AssertionError("a plain model must not be loaded whole")

    monkeypatch.setattr(checkpoint, "load", refuse)
    out = tmp_path / "scores.json"
    args = ["eval", str(tiny_smollm_dir), "--eval", "pydoc,onecomp_wiki_title", "--eval-limit", "8", "--seqlen", "32",
            "--max-windows", "3", "--device", "cpu", "-o", str(out)]
    code, text = run_cli(args, capsys)
    assert code == 0, text
    streamed = json.loads(out.read_text())["metrics"]
    cfg = EvalConfig(ppl=["pydoc"], tasks=["onecomp_wiki_title"], limit=8, seqlen=32, max_windows=3)
    model = whole_load(tiny_smollm_dir, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_smollm_dir)
    whole = evaluate(model, tokenizer, cfg, torch.device("cpu"), NullReporter(), "whole").metrics
    assert streamed.keys() == whole.keys()
    for key, value in whole.items():
        assert streamed[key] == pytest.approx(value, rel=1e-5), key


def test_a_terminal_sees_what_runs_before_the_libraries_load(capsys, monkeypatch, tmp_path) -> None:
    import io

    from rich.console import Console

    import onecomp.cli as cli
    import onecomp.ui as ui

    screen = io.StringIO()
    monkeypatch.setattr(ui, "err_console", Console(file=screen, force_terminal=True, width=200))
    monkeypatch.setattr(cli, "_quiet_transformers", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))  # stop at the first import
    code, _ = run_cli(["compress", "smollm2-135m", "-o", str(tmp_path / "o")], capsys)
    from onecomp import __version__

    lines = screen.getvalue().splitlines()
    assert lines[0] == f"onecomp {__version__}: compressing smollm2-135m -> {tmp_path / 'o'}"
    assert code == 130 and "stopped" in lines[-1]


# Bad weights, configs, pivots, state and YAML: one line, exit 2, and the job
# directory neither made nor damaged.


def _assert_single_line(code: int, output: str, needle: str) -> None:
    assert code == 2, output
    assert_one_line_error(code, output, needle)
    assert len(output.strip().splitlines()) == 1, output


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def test_truncated_weights_are_refused_before_the_job_starts(capsys, tmp_path, tiny_model_dir) -> None:
    _truncate(tiny_model_dir / "model.safetensors")
    code, out = run_cli(["compress", str(tiny_model_dir), "-o", str(tmp_path / "o")], capsys)
    _assert_single_line(code, out, "is not an intact safetensors file")
    assert not (tmp_path / "o").exists()
    code, out = run_cli(["eval", str(tiny_model_dir)], capsys)
    _assert_single_line(code, out, "is not an intact safetensors file")


def test_plan_of_truncated_weights_makes_no_directory(capsys, tmp_path, tiny_model_dir) -> None:
    _truncate(tiny_model_dir / "model.safetensors")
    code, out = run_cli(["plan", str(tiny_model_dir), "--bpw", "4", "--calib", "pydoc", "-o", str(tmp_path / "p")], capsys)
    _assert_single_line(code, out, "is not an intact safetensors file")
    assert not (tmp_path / "p").exists()


def test_pickled_weights_beside_a_decoy_are_refused(capsys, tmp_path, tiny_model_dir) -> None:
    (tiny_model_dir / "model.safetensors").rename(tiny_model_dir / "x.safetensors")
    (tiny_model_dir / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    for cmd in (["compress", str(tiny_model_dir), "-o", str(tmp_path / "o")], ["eval", str(tiny_model_dir)]):
        code, out = run_cli(cmd, capsys)
        _assert_single_line(code, out, "holds only pickled weights (pytorch_model.bin)")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "text,needle",
    [
        ('{"model_type": "llama", ', "is not valid JSON"),
        ('{"hidden_size": 64}', "has no model_type"),
        ('{"model_type": "nosuchmodel"}', "model_type 'nosuchmodel' is unknown to the installed transformers"),
    ],
)
def test_a_bad_config_json_is_one_line(capsys, tmp_path, tiny_model_dir, text, needle) -> None:
    (tiny_model_dir / "config.json").write_text(text)
    for cmd in (["compress", str(tiny_model_dir), "-o", str(tmp_path / "o")], ["inspect", str(tiny_model_dir)], ["eval", str(tiny_model_dir)]):
        code, out = run_cli(cmd, capsys)
        _assert_single_line(code, out, needle)
    assert not (tmp_path / "o").exists()


def test_a_binary_config_is_one_line(capsys, tmp_path, tiny_model_dir) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    code, out = run_cli(["compress", str(tiny_model_dir), "-o", str(tmp_path / "o"), "--config", str(cfg)], capsys)
    _assert_single_line(code, out, "is not a text file")
    code, out = run_cli(["batch", str(cfg)], capsys)
    _assert_single_line(code, out, "is not a text file")
    assert not (tmp_path / "o").exists()


def test_every_mistake_of_a_config_is_named(capsys, tmp_path, tiny_model_dir) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_text("quant:\n  bits: 5\n  colour: red\ncalib:\n  nsamples: -3\n")
    code, out = run_cli(["compress", str(tiny_model_dir), "-o", str(tmp_path / "o"), "--config", str(cfg)], capsys)
    for needle in ("quant.colour", "quant.bits: bits must be one of", "calib.nsamples"):
        assert needle in out, out
    assert_one_line_error(code, out, "quant.colour")
    assert len(out.strip().splitlines()) <= 3


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda layers, name: layers[name].update(format="magic"), "unknown weight format 'magic'"),
        (lambda layers, name: layers[name].update(bits=5), "bits must be one of"),
        (lambda layers, name: layers.update({"model.layers.9.mlp.up_proj": layers[name]}), "layer model.layers.9.mlp.up_proj does not exist"),
        (lambda layers, name: layers[name].update(group_size=16), "declared format w4g16 needs"),
    ],
)
def test_eval_of_a_pivot_with_a_bad_quantization_config_is_one_line(capsys, tmp_path, edit, needle) -> None:
    from tests.test_checkpoint import make_pivot

    pivot = make_pivot(tmp_path / "pivot")
    cfg = json.loads((pivot / "config.json").read_text())
    edit(cfg["quantization_config"]["layers"], "model.layers.0.self_attn.q_proj")
    (pivot / "config.json").write_text(json.dumps(cfg))
    code, out = run_cli(["eval", str(pivot)], capsys)
    _assert_single_line(code, out, needle)


def test_a_damaged_source_pivot_leaves_no_job(capsys, tmp_path, tiny_model_dir) -> None:
    from onecomp.fingerprint import model_fingerprint
    from tests.conftest import tiny_model
    from tests.test_checkpoint import make_pivot

    pivot = make_pivot(tmp_path / "pivot", tiny_model("llama"))
    meta = json.loads((pivot / "onecomp.json").read_text())
    meta["source"] = {"spec": str(tiny_model_dir), "fingerprint": model_fingerprint(tiny_model_dir)}
    (pivot / "onecomp.json").write_text(json.dumps(meta))
    _truncate(pivot / "model.safetensors")
    args = ["compress", str(tiny_model_dir), "--from-pivot", str(pivot), "--stages", "blockwise", "-o", str(tmp_path / "o")]
    code, out = run_cli(args, capsys)
    _assert_single_line(code, out, "is not an intact safetensors file")
    assert not (tmp_path / "o").exists()


def _finished_job(out_dir: Path, model: Path) -> Path:
    out_dir.mkdir()
    (out_dir / "job.yaml").write_text(f"model: {model}\noutput: {out_dir}\n")
    (out_dir / "state.json").write_text(json.dumps({"version": "0", "job": "x", "stages": ["layerwise"], "complete": True}))
    (out_dir / "pivots" / "1-layerwise").mkdir(parents=True)
    (out_dir / "pivots" / "1-layerwise" / "model.safetensors").write_bytes(b"hours of compute")
    return out_dir


def test_overwrite_keeps_what_a_job_does_not_write(capsys, tmp_path, tiny_model_dir) -> None:
    out_dir = _finished_job(tmp_path / "o", tiny_model_dir)
    (out_dir / "precious.txt").write_text("keep me")
    code, out = run_cli(["compress", str(tiny_model_dir), "-o", str(out_dir), "--overwrite"], capsys)
    _assert_single_line(code, out, "besides the job it holds precious.txt")
    assert (out_dir / "precious.txt").read_text() == "keep me"
    assert (out_dir / "pivots" / "1-layerwise" / "model.safetensors").is_file()


def test_overwrite_needs_a_verifiable_job(capsys, tmp_path, tiny_model_dir) -> None:
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / "job.yaml").write_text("steps: [build, deploy]\n")  # someone else's job.yaml
    (out_dir / "deploy.sh").write_text("keep me")
    code, out = run_cli(["compress", str(tiny_model_dir), "-o", str(out_dir), "--overwrite"], capsys)
    _assert_single_line(code, out, "not a onecomp job directory")
    assert sorted(p.name for p in out_dir.iterdir()) == ["deploy.sh", "job.yaml"]


def test_overwrite_deletes_nothing_when_the_new_job_is_refused(capsys, tmp_path, tiny_model_dir) -> None:
    out_dir = _finished_job(tmp_path / "o", tiny_model_dir)
    _truncate(tiny_model_dir / "model.safetensors")
    code, out = run_cli(["compress", str(tiny_model_dir), "-o", str(out_dir), "--overwrite"], capsys)
    _assert_single_line(code, out, "is not an intact safetensors file")
    assert (out_dir / "pivots" / "1-layerwise" / "model.safetensors").read_bytes() == b"hours of compute"


@pytest.mark.parametrize("content", [b"", b'{"version": "0", "done": ['])
def test_resume_with_a_damaged_state_is_one_line(capsys, tmp_path, tiny_model_dir, content) -> None:
    out_dir = _finished_job(tmp_path / "o", tiny_model_dir)
    (out_dir / "state.json").write_bytes(content)
    for cmd in (["resume", str(out_dir)], ["compress", str(tiny_model_dir), "-o", str(out_dir), "--resume"]):
        code, out = run_cli(cmd, capsys)
        _assert_single_line(code, out, "is damaged")
    assert (out_dir / "state.json").read_bytes() == content
    assert (out_dir / "pivots" / "1-layerwise" / "model.safetensors").is_file()


def test_a_full_disk_while_writing_weights_is_one_line(capsys, tmp_path, tiny_smollm_dir, monkeypatch) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*_a, **_k):  # what safetensors raises on ENOSPC (seen on a 64 KiB tmpfs)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out_dir = tmp_path / "o"
    args = ["compress", str(tiny_smollm_dir), "--method", "rtn", "--no-qep", "--nsamples", "2", "--seqlen", "16", "--eval", "none", "-o", str(out_dir)]
    code, out = run_cli(args, capsys)
    assert code == 2 and "Traceback" not in out, out
    last = out.strip().splitlines()[-1]  # after the progress lines of the work done so far
    assert last.startswith("error: no space left while writing") and out.count("error:") == 1, out
    assert (out_dir / "job.yaml").is_file() and not (out_dir / "pivots" / "1-layerwise").exists()


def test_overwrite_keeps_the_old_job_when_the_new_one_does_not_fit(capsys, tmp_path, tiny_model_dir, monkeypatch) -> None:
    from onecomp import pipeline
    from onecomp.hardware import detect_hardware

    real = detect_hardware()
    real.ram_available_bytes = 2**20
    monkeypatch.setattr(pipeline, "detect_hardware", lambda: real)
    out_dir = _finished_job(tmp_path / "o", tiny_model_dir)
    before = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*"))
    job_yaml = (out_dir / "job.yaml").read_text()
    args = ["compress", str(tiny_model_dir), "-o", str(out_dir), "--overwrite", "--calib", "pydoc", "--eval", "none"]
    code, out = run_cli(args, capsys)
    _assert_single_line(code, out, "of host memory but only")
    assert sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")) == before
    assert (out_dir / "job.yaml").read_text() == job_yaml
    assert (out_dir / "pivots" / "1-layerwise" / "model.safetensors").read_bytes() == b"hours of compute"


def test_overwrite_replaces_a_finished_job(capsys, tmp_path, tiny_smollm_dir) -> None:
    out_dir = _finished_job(tmp_path / "o", tiny_smollm_dir)
    args = ["compress", str(tiny_smollm_dir), "--method", "rtn", "--no-qep", "--nsamples", "2", "--seqlen", "16", "--eval", "none", "-o", str(out_dir), "--overwrite"]
    code, out = run_cli(args, capsys)
    assert code == 0, out
    assert (out_dir / "pivots" / "1-layerwise" / "model.safetensors").read_bytes() != b"hours of compute"
    assert not (out_dir / ".onecomp-replaced").exists()
    assert json.loads((out_dir / "state.json").read_text())["complete"] is True
