"""The tiny Think and Instruct chains end to end through `posttrain demo`, a few steps per stage (`plumbing_chains`).

Checks what only a real run shows: each stage's manifest chains to the one
before (Instruct SFT from the Think SFT), every checkpoint is complete and
evaluated, a second run skips every stage, the final checkpoints load in
`transformers` and vLLM as exported, their model cards name the lineage, and
the report renders in a browser. Whether the stages learn is asserted on the
chains trained by the recipes as shipped (tests/e2e/test_learning.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from posttrain.checkpoints import EXPORT_DIR, MANIFEST, MODEL_CARD, directory_hash, is_complete_export, read_json
from posttrain.eval.heldout import EVAL_FILE
from posttrain.metrics import read_metrics
from posttrain.report import REPORT_HTML, REPORT_MD
from posttrain.pipeline import PIPELINE_FILE
from posttrain.stages import CHAIN

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
VARIANTS = ("think", "instruct")


def test_the_demo_ran_both_chains_and_told_where_to_look(plumbing_chains):
    log = (plumbing_chains / "demo.log").read_text()
    for variant in VARIANTS:
        stages = read_json(plumbing_chains / variant / PIPELINE_FILE)["stages"]
        assert [(s["stage"], s["action"]) for s in stages] == [(stage, "ran") for stage in CHAIN]
        assert f"{variant} chain (" in log and f"{variant}: held-out metrics after each stage" in log
    assert "Where to look:" in log and str(plumbing_chains / REPORT_HTML) in log
    assert str(plumbing_chains / "instruct" / "rlvr" / EXPORT_DIR) in log


def test_each_manifest_names_its_input_by_hash(plumbing_chains, tiny_dir):
    for variant in VARIANTS:
        for index, stage in enumerate(CHAIN):
            checkpoint = plumbing_chains / variant / stage / EXPORT_DIR
            assert is_complete_export(checkpoint)
            manifest = read_json(checkpoint / MANIFEST)
            assert manifest["content_hash"] == directory_hash(checkpoint, exclude=(MANIFEST, MODEL_CARD))
            parent = manifest["parent"]
            if index > 0:
                previous = plumbing_chains / variant / CHAIN[index - 1] / EXPORT_DIR
                assert parent == {"path": str(previous), "hash": read_json(previous / MANIFEST)["content_hash"]}
            assert manifest["config"]["variant"] == variant and manifest["config_hash"]
            assert manifest["data_sources"] and all(str(tiny_dir) in path for path in manifest["data_sources"])
            assert manifest["git"]["commit"] and {"torch", "transformers"} <= set(manifest["packages"])
            assert manifest["wall_time_s"] > 0 and manifest["metrics"]
    think_sft = plumbing_chains / "think" / "sft" / EXPORT_DIR
    instruct_sft = read_json(plumbing_chains / "instruct" / "sft" / EXPORT_DIR / MANIFEST)
    assert instruct_sft["parent"]["hash"] == read_json(think_sft / MANIFEST)["content_hash"]
    think_base = read_json(think_sft / MANIFEST)["parent"]
    assert think_base["path"] == str(tiny_dir / "base")


def test_every_checkpoint_was_evaluated_on_the_same_suite(plumbing_chains):
    for variant in VARIANTS:
        evals = read_json(plumbing_chains / variant / EVAL_FILE)
        results = evals["results"]
        assert set(results) == {"input", *CHAIN}  # (stored with sorted keys; readers order by the chain)
        assert len({r["suite"] for r in results.values()}) == 1
        for result in results.values():
            metrics = result["metrics"]
            assert {"pass@1", "pass@1/math", "pass@1/ifeval", "format", "pref_acc"} <= set(metrics)
            assert all(0.0 <= metrics[k] <= 1.0 for k in ("pass@1", "format", "pref_acc"))


def test_a_second_run_skips_every_stage(plumbing_chains, tiny_dir):
    first = read_json(plumbing_chains / "think" / PIPELINE_FILE)  # the same command line as the demo's think chain
    size = read_json(plumbing_chains / "think" / EVAL_FILE)["suite"]["size"]
    began = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "posttrain", "pipeline", "--variant", "think", "--tiny", str(tiny_dir),
         "--run-dir", str(plumbing_chains / "think"), "--eval-size", str(size), *first["overrides"]],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    stages = read_json(plumbing_chains / "think" / PIPELINE_FILE)["stages"]
    assert [(s["stage"], s["action"], s["reason"]) for s in stages] == [(s, "skipped", "inputs unchanged") for s in CHAIN]
    assert "[eval" not in result.stdout  # cached evaluations are reused too
    print(f"rerun of an unchanged chain: {time.time() - began:.0f}s")


PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]


def transformers_greedy(path: Path, max_new_tokens: int = 48) -> tuple[list[int], float]:
    """Greedy response token ids from `transformers`, and the top-2 logit margin of its first token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        top2 = model(**ids).logits[0, -1].topk(2).values
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return out[0, ids["input_ids"].shape[1]:].tolist(), float(top2[0] - top2[1])


def test_the_final_checkpoints_load_in_transformers_and_generate(plumbing_chains):
    for variant in VARIANTS:
        tokens, _ = transformers_greedy(plumbing_chains / variant / "rlvr" / EXPORT_DIR)
        assert tokens


VLLM_SCRIPT = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams

    if __name__ == "__main__":
        llm = LLM(model=sys.argv[1], dtype="float32", max_model_len=512, gpu_memory_utilization=0.05,
                  enforce_eager=True, seed=0)
        out = llm.chat([{"role": "user", "content": "What is 2 + 3?"}], SamplingParams(max_tokens=48, temperature=0))
        print("RESULT " + json.dumps(list(out[0].outputs[0].token_ids)))
""")


def test_the_final_checkpoint_loads_in_vllm_as_exported(plumbing_chains, tmp_path):
    """vLLM loads the export as it is (weights, config, tokenizer, chat template) and answers as transformers does."""
    script = tmp_path / "load_vllm.py"
    script.write_text(VLLM_SCRIPT)
    path = plumbing_chains / "think" / "rlvr" / EXPORT_DIR
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    tokens = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[7:])
    want, margin = transformers_greedy(path)
    assert tokens
    if margin > 0.05:  # (a near tie may break either way between two float32 implementations)
        assert tokens[0] == want[0], (tokens, want)


def test_the_model_cards_name_the_lineage(plumbing_chains, tiny_dir):
    card = (plumbing_chains / "instruct" / "rlvr" / EXPORT_DIR / MODEL_CARD).read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    assert "# Instruct model after think SFT -> instruct SFT -> instruct DPO -> instruct RLVR" in card
    assert f"Base: `{tiny_dir / 'base'}`" in card
    for variant, stage in (("think", "sft"), ("instruct", "sft"), ("instruct", "dpo"), ("instruct", "rlvr")):
        assert read_json(plumbing_chains / variant / stage / EXPORT_DIR / MANIFEST)["content_hash"] in card
    assert "AutoModelForCausalLM.from_pretrained" in card and "from vllm import LLM" in card


def test_the_report_holds_both_chains_and_renders(plumbing_chains, tmp_path):
    from PIL import Image

    md = (plumbing_chains / REPORT_MD).read_text()
    assert "## Think chain" in md and "## Instruct chain" in md
    assert md.count("| pass@1, all verifiers |") == 2 and md.count("| preference accuracy |") == 2
    assert (plumbing_chains / "report" / "think_loss.png").is_file() and (plumbing_chains / "report" / "think_reward.png").is_file()
    shot = tmp_path / "report.png"
    chromium = next(p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists())
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,3000", f"--screenshot={shot}",
                    (plumbing_chains / REPORT_HTML).as_uri()], check=True, capture_output=True, timeout=120)
    gray = Image.open(shot).convert("L")
    non_white = sum(1 for v in gray.getdata() if v < 235) / (gray.size[0] * gray.size[1])
    assert non_white > 0.03

