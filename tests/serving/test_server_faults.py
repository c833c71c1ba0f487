"""Issue 33 item 5, end to end with a real vLLM server (``make vllm``): ``divreg rl`` samples from
its own server (``generation.server``); the server is killed in the middle of the run. The run
retries with backoff, then stops within a bounded time in one line, with a checkpoint of the steps
done (never a hang); a server started again on the same port and ``resume=true`` finish the run."""

import json
import signal
import subprocess
import sys
import time

import pytest

from divreg.models import save_model_folder
from divreg.serving import VLLMServer

from .conftest import served_model
from ..recipes import lm_fixtures as fx

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.alone]


def test_a_server_killed_mid_run_stops_the_run_in_one_line_and_resume_finishes(vllm_python, tmp_path):
    import torch

    folder = tmp_path / "policy"
    save_model_folder(served_model(), fx.tokenizer(), str(folder))
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a} + {b} =", "answer": str(a + b)}) + "\n"
                            for a in range(6) for b in range(4)))
    server = VLLMServer(str(folder), python=vllm_python, max_logprobs=64, max_model_len=256).start()
    port = server.port
    arguments = [f"policy.path={folder}", f"data={data}", "rewards={exact_match: 1.0}", "steps=40", "eval_every=40",
                 "prompts_per_step=2", "group_size=2", "max_new_tokens=5", f"generation.server={server.url}",
                 "seeds=[0]", "checkpoint_every=100", f"output_dir={tmp_path / 'run'}"]
    run = subprocess.Popen([sys.executable, "-m", "divreg.cli", "rl", *arguments], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "metrics.jsonl"
    try:
        deadline = time.time() + 600
        while time.time() < deadline and run.poll() is None:  # a few steps on the server, then it dies
            if log.exists() and sum('"record": "step"' in line for line in log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        server.stop()
        killed_at = time.time()
        _, err = run.communicate(timeout=300)  # bounded: time-outs and backoff, never a hang
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGKILL)
        server.stop()
    assert run.returncode == 1, err[-3000:]
    errors = [line[line.index("divreg rl: error:"):] for line in err.splitlines() if "divreg rl: error:" in line]
    assert "Traceback" not in err and len(errors) == 1, err[-3000:]  # one line (after the progress bars)
    assert "does not answer" in errors[0] and "resume=true" in errors[0], errors
    assert time.time() - killed_at < 120
    state = torch.load(tmp_path / "run" / "checkpoints" / "grpo-seed0.pt", weights_only=False)["state"]
    assert 3 <= state["step"] < 40 and not state["done"]  # the steps done, though no periodic checkpoint was due
    with VLLMServer(str(folder), python=vllm_python, port=port, max_logprobs=64, max_model_len=256):
        resumed = subprocess.run([sys.executable, "-m", "divreg.cli", "rl", *arguments, "resume=true"],
                                 capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line) for line in log.read_text().splitlines() if json.loads(line)["record"] == "step"
             and json.loads(line)["run"] == "grpo-seed0"]
    assert [r["step"] for r in steps] == list(range(1, 41))
