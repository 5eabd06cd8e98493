"""RLVR speed, each a ratio from runs side by side on this machine.

(a) asynchronous (grpo.max_async_steps 1) against synchronous (0) step time of this stage, and (vLLM engine)
    asynchronous with in-flight weight updates (rollout.inflight_updates, weights broadcast) against without,
    and on-policy with the engine colocated (distributed.colocate: it sleeps through each update, weights by
    ipc) against not;
(b) this stage against TRL's GRPOTrainer: wall-clock from the first step to the same held-out pass rate
    (the start checkpoint's + `--target-gain`), same model, data, reward and hyperparameters; each side's
    one-time start-up (Ray, engines, learner; TRL's trainer) reported apart;
(c) vLLM against the `hf` engine, generated tokens/s (bench/rollout_engines.py, a random 25M model);
(p) the update phase with packed micro-batches (`batch.pack_length`) against padded ones: the learner's
    train_step on one step's 64 samples (prompts from the tiny RLVR data, responses of 8-256 tokens drawn
    uniformly), padded at micro-batch 1 (the Olmo 3 recipes' setting without packing) and 16 (the tiny
    recipes'), alternated, median of `--repeats`; the same loss either way (tests/objectives/test_forward.py).

Workload (a, b): a tiny DPO checkpoint (Instruct by default: its RLVR gains fastest) deepened to >= 20M
parameters with identity layers (the gains of their output norms are zero, so the deeper model computes
exactly what the tiny one does, at the cost of a 20M model), the tiny RLVR prompts (math and IFEval constraints), 8 prompts x 8
samples per step, responses up to 256 tokens (lengths vary with the task), temperature 1, lr 3e-5
(the tiny recipes') constant after a short warmup, no KL, clip 0.2 / 0.272, token-level loss, advantages not divided by
the std. Held-out pass@1 is greedy, on the same prompts, with evaluation time kept off both clocks. This stage
generates with `--engine` (vLLM by default, as every recipe above the tiny ones); TRL with transformers.

    python bench/rlvr.py [--variant instruct] [--checkpoint runs/demo/instruct/dpo/checkpoint] [--data runs/tiny/data/rlvr]
                         [--parts abcp] [--engine vllm] [--out runs/bench/rlvr]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIN_PARAMS = 20_000_000
SAMPLES, PROMPTS, MAX_TOKENS = 8, 8, 256
HYPER = dict(lr=3e-5, warmup_steps=3, eps_low=0.2, eps_high=0.272)


# --------------------------------------------------------------------------- the workload


def deepen(src: Path, out: Path, min_params: int = MIN_PARAMS) -> tuple[Path, int]:
    """Copy `src` with identity layers interleaved until it has >= min_params parameters."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from posttrain.checkpoints import MANIFEST, MODEL_CARD, directory_hash

    # reused only when made from the same source by this method: a stale copy would bench another model
    made_from = {"source": str(src.resolve()), "source_hash": directory_hash(src, exclude=(MANIFEST, MODEL_CARD)),
                 "min_params": min_params, "identity": "post-norm gains zero"}
    marker = out / "deepened_from.json"
    if marker.is_file() and json.loads(marker.read_text()) == made_from:
        model = AutoModelForCausalLM.from_pretrained(out)
        return out, sum(p.numel() for p in model.parameters())
    shutil.rmtree(out, ignore_errors=True)
    small = AutoModelForCausalLM.from_pretrained(src)
    config = AutoConfig.from_pretrained(src)
    layers = config.num_hidden_layers
    per_layer = sum(p.numel() for p in small.model.layers[0].parameters())
    total = sum(p.numel() for p in small.parameters())
    extra = max(0, math.ceil((min_params - total) / per_layer))
    config.num_hidden_layers = layers + extra
    config.layer_types = [("full_attention" if (i + 1) % 4 == 0 else "sliding_attention")
                          for i in range(config.num_hidden_layers)]
    torch.manual_seed(0)
    deep = AutoModelForCausalLM.from_config(config)
    # original layer i goes to position slots[i]; the others become identities
    slots = [round(i * config.num_hidden_layers / layers) for i in range(layers)]
    state = deep.state_dict()
    for name, tensor in small.state_dict().items():
        if ".layers." in name:
            prefix, rest = name.split(".layers.", 1)
            index, tail = rest.split(".", 1)
            name = f"{prefix}.layers.{slots[int(index)]}.{tail}"
        state[name] = tensor
    # Olmo 3 normalises each sublayer's output before adding it (post-norm), so a zeroed projection alone is
    # not an identity that survives training: Adam's first step makes it tiny but non-zero, and the RMSNorm
    # scales that back to full size. Zeroing the post-norms' gains instead keeps the added output at the
    # gain's size, which grows from 0 by about lr per step.
    for i in set(range(config.num_hidden_layers)) - set(slots):
        for norm in ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight"):
            state[f"model.layers.{i}.{norm}"] = torch.zeros_like(state[f"model.layers.{i}.{norm}"])
    deep.load_state_dict(state)
    deep.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    for name in ("generation_config.json",):
        if (src / name).is_file():
            (out / name).write_text((src / name).read_text())
    marker.write_text(json.dumps(made_from, indent=2))  # last: a killed run leaves no marker
    return out, sum(p.numel() for p in deep.parameters())


def stage_command(model: Path, data: Path, out: Path, *overrides: str, variant: str = "instruct",
                  engine: str = "vllm") -> list[str]:
    return [sys.executable, "-m", "posttrain", "rlvr", "--recipe", str(REPO / f"recipes/tiny/{variant}/rlvr.yaml"),
            "--output-dir", str(out), f"model.path={model}", f"rollout.engine={engine}",
            f"data.train.0.path={data / 'train.jsonl'}",
            f"data.heldout.0.path={data / 'heldout.jsonl'}", f"grpo.prompts_per_step={PROMPTS}",
            f"grpo.samples_per_prompt={SAMPLES}", f"rollout.max_response_length={MAX_TOKENS}",
            f"optim.lr={HYPER['lr']}", "optim.schedule=constant", "rollout.temperature=1.0", "grpo.format_reward=0.0",
            "logging.progress=false", "logging.every=1",
            "batch.sequences=64", *overrides]


def run_logged(command: list[str], log: Path, timeout: int = 3600) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as handle:
        result = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed; see {log}:\n{log.read_text()[-3000:]}")


def records(run: Path) -> list[dict]:
    from posttrain.metrics import read_metrics

    return read_metrics(run)


# --------------------------------------------------------------------------- (a) async vs sync


A_ARMS = {  # name: overrides
    "k0": ("grpo.max_async_steps=0",),
    "k1": ("grpo.max_async_steps=1",),
    "k1_inflight": ("grpo.max_async_steps=1", "rollout.weight_sync=broadcast", "rollout.inflight_updates=true"),
    "k0_colocated": ("grpo.max_async_steps=0", "distributed.colocate=true", "rollout.weight_sync=ipc"),
}


def part_a(model: Path, data: Path, out: Path, steps: int, args) -> dict:
    """Mean step time over steps 2..N (the first step pays warm-up) of each arm (in-flight updates: vLLM only)."""
    result = {}
    for name, overrides in A_ARMS.items():
        if name.endswith(("inflight", "colocated")) and args.engine != "vllm":
            continue
        run = out / f"a_{name}"
        warmup = f"optim.warmup_ratio={HYPER['warmup_steps'] / steps:.4f}"
        run_logged(stage_command(model, data, run, f"grpo.steps={steps}", *overrides,
                                 "eval.every=0", "data.heldout=[]", warmup, variant=args.variant,
                                 engine=args.engine),
                   out / f"a_{name}.log")
        rows = records(run)
        times = [r["time/step"] for r in rows if "time/step" in r][1:]
        manifest = json.loads((run / "checkpoint" / "manifest.json").read_text())
        result[name] = {"step_s": sum(times) / len(times), "startup_s": manifest["startup_s"],
                        "idle_learner": _mean(rows, "idle/learner"), "idle_engine": _mean(rows, "idle/engine"),
                        "staleness_token_mean": _mean(rows, "staleness/token_mean"),
                        "switched_frac": _mean(rows, "inflight/switched_frac")}
        print(f"  (a) {name}: {result[name]['step_s']:.2f} s/step over {len(times)} steps", flush=True)
    result["ratio"] = result["k1"]["step_s"] / result["k0"]["step_s"]
    if "k1_inflight" in result:
        result["inflight_ratio"] = result["k1_inflight"]["step_s"] / result["k1"]["step_s"]
    if "k0_colocated" in result:
        result["colocated_ratio"] = result["k0_colocated"]["step_s"] / result["k0"]["step_s"]
    return result


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return sum(values) / len(values) if values else float("nan")


# --------------------------------------------------------------------------- (b) this stage vs TRL


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """First training time at which the pass rate reached `target` ((seconds, pass rate) points)."""
    return next((seconds for seconds, rate in curve if rate >= target - 1e-9), None)


def part_b(model: Path, data: Path, out: Path, args) -> dict:
    run = out / "b_stage"
    started = time.time()
    run_logged(stage_command(model, data, run, f"grpo.steps={args.steps_b}", "grpo.max_async_steps=1",
                             f"eval.every={args.eval_every}", f"eval.max_prompts={args.eval_prompts}",
                             f"optim.warmup_ratio={HYPER['warmup_steps'] / args.steps_b:.4f}", variant=args.variant,
                             engine=args.engine),
               out / "b_stage.log")
    rows = records(run)
    train_s = {r["step"]: r["train_wall_s"] for r in rows if "train_wall_s" in r}
    train_s[0] = 0.0
    ours = [(train_s[r["step"]], r["eval/pass@1"]) for r in rows if "eval/pass@1" in r]
    before = ours[0][1]
    manifest = json.loads((run / "checkpoint" / "manifest.json").read_text())
    ours_startup = manifest["startup_s"]
    print(f"  (b) stage: pass@1 {before:.3f} -> {ours[-1][1]:.3f} in {ours[-1][0]:.0f} s of training "
          f"(start-up {ours_startup:.0f} s, whole run {time.time() - started:.0f} s)", flush=True)

    target = before + args.target_gain
    trl_json = out / "b_trl.json"
    worker = dict(model=str(model), data=str(data), steps=args.steps_b, eval_every=args.eval_every,
                  eval_prompts=args.eval_prompts, target=target, budget_s=args.trl_budget, out=str(trl_json))
    run_logged([sys.executable, str(Path(__file__).resolve()), "--trl-worker", json.dumps(worker)], out / "b_trl.log")
    trl = json.loads(trl_json.read_text())
    ours_t, trl_t = time_to(ours, target), time_to([tuple(p) for p in trl["curve"]], target)
    print(f"  (b) TRL: pass@1 {trl['curve'][0][1]:.3f} -> {trl['curve'][-1][1]:.3f} in {trl['curve'][-1][0]:.0f} s "
          f"of training (start-up {trl['startup_s']:.0f} s)", flush=True)
    ratio = ours_t / trl_t if ours_t and trl_t else None
    return {"target": target, "before": before, "stage": {"curve": ours, "time_to_target_s": ours_t,
            "startup_s": ours_startup}, "trl": {**trl, "time_to_target_s": trl_t}, "ratio": ratio}


def trl_worker(spec: dict) -> None:
    """TRL's GRPOTrainer with the stage's hyperparameters; evaluates like the stage, stops at the target."""
    started = time.time()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import rewards
    from posttrain.config import RolloutSection
    from posttrain.rollout.hf_engine import HFEngine
    from posttrain.data.rlvr import heldout_prompts
    from posttrain.eval.heldout import read_rows, summarize
    from posttrain.data.rlvr import Group

    torch.set_num_threads(os.cpu_count() or 1)
    model_path, data = spec["model"], Path(spec["data"])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train = [{"prompt": r["messages"], "ground_truth": r["ground_truth"], "verifier": r["verifier"]}
             for r in read_rows(data / "train.jsonl")]
    held = heldout_prompts(read_rows(data / "heldout.jsonl"), tokenizer, 256, spec["eval_prompts"])
    engine = HFEngine(model_path, RolloutSection(engine="hf", max_response_length=MAX_TOKENS))

    def reward(prompts, completions, ground_truth, verifier, **_):
        items = [{"verifier": v, "prediction": c[-1]["content"] if isinstance(c, list) else c, "label": g}
                 for c, g, v in zip(completions, ground_truth, verifier)]
        return [r.score for r in rewards.score_batch(items, max_workers=1, timeout=10.0)]

    def evaluate(model) -> float:
        engine.model = model
        was_training = model.training
        model.eval()
        completions = engine.generate([p.ids for p in held], 1, temperature=0.0, max_tokens=MAX_TOKENS)
        model.train(was_training)
        items = [{"verifier": held[c.prompt_index].verifier, "prediction": c.text,
                  "label": held[c.prompt_index].ground_truth} for c in completions]
        scores = rewards.score_batch(items, max_workers=1, timeout=10.0)
        groups = [Group(held[c.prompt_index], [c.token_ids], [c.logprobs], [False], 0, [s.score])
                  for c, s in zip(completions, scores)]
        return summarize(groups)["eval/pass@1"]

    class Clock(TrainerCallback):
        def __init__(self):
            self.first = None
            self.eval_s = 0.0
            self.curve: list[tuple[float, float]] = []

        def train_s(self) -> float:
            return 0.0 if self.first is None else time.time() - self.first - self.eval_s

        def on_step_begin(self, args, state, control, **kw):
            if self.first is None:
                self.first = time.time()

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % spec["eval_every"]:
                return
            begin, train_s = time.time(), self.train_s()
            rate = evaluate(model)
            self.eval_s += time.time() - begin
            self.curve.append((train_s, rate))
            print(f"TRL step {state.global_step}: pass@1 {rate:.3f} at {train_s:.0f} s", flush=True)
            if rate >= spec["target"] - 1e-9 or train_s > spec["budget_s"]:
                control.should_training_stop = True

    config = GRPOConfig(
        output_dir=str(Path(spec["out"]).parent / "b_trl_run"), use_cpu=True, bf16=False, report_to="none",
        save_strategy="no", logging_steps=1, seed=0, per_device_train_batch_size=PROMPTS * SAMPLES,
        gradient_accumulation_steps=1, num_generations=SAMPLES, max_completion_length=MAX_TOKENS,
        temperature=1.0, top_p=1.0, beta=0.0, epsilon=HYPER["eps_low"], epsilon_high=HYPER["eps_high"],
        loss_type="dapo", scale_rewards="none", num_iterations=1, learning_rate=HYPER["lr"],
        lr_scheduler_type="constant_with_warmup", warmup_steps=HYPER["warmup_steps"], max_grad_norm=1.0,
        max_steps=spec["steps"], adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0,
    )
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    clock = Clock()
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=Dataset.from_list(train),
                          processing_class=tokenizer, callbacks=[clock])
    startup_s = time.time() - started
    clock.curve.append((0.0, evaluate(trainer.model)))
    trainer.train()
    Path(spec["out"]).write_text(json.dumps({"curve": clock.curve, "startup_s": startup_s,
                                             "steps": trainer.state.global_step}))


# --------------------------------------------------------------------------- (c) engines


def part_c(out: Path, prompts: int) -> dict:
    result_json = out / "c_engines.json"
    run_logged([sys.executable, str(REPO / "bench/rollout_engines.py"), "--prompts", str(prompts),
                "--json", str(result_json)], out / "c_engines.log")
    result = json.loads(result_json.read_text())
    print(f"  (c) vllm {result['vllm']['tokens_per_s']:.0f} tokens/s, hf {result['hf']['tokens_per_s']:.0f} tokens/s",
          flush=True)
    return result


# --------------------------------------------------------------------------- (p) packed vs padded updates


def part_p(model: Path, data: Path, args) -> dict:
    import random
    import statistics

    from transformers import AutoTokenizer

    from posttrain.config import DeepSpeedSection, LoraSection, ModelSection, OptimSection
    from posttrain.data.rlvr import Sample, plan_update
    from posttrain.learner import Learner, LearnerSpec
    from posttrain.objectives.rlvr import policy_loss_fn

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()[:PROMPTS]]
    prompts = [tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=True,
                                            return_dict=False) for r in rows]
    rng = random.Random(0)
    samples = []
    for i in range(PROMPTS * SAMPLES):
        length = rng.randint(8, MAX_TOKENS)
        samples.append(Sample(list(prompts[i // SAMPLES]), [rng.randrange(3, tokenizer.vocab_size) for _ in range(length)],
                              [-1.0] * length, reward=float(i % 2), advantage=float(i % 2) - 0.5, group=i // SAMPLES,
                              version=0, truncated=False))
    pack_length = max(len(p) for p in prompts) + MAX_TOKENS
    layouts = {"padded_mb1": dict(micro_batch_size=1), "padded_mb16": dict(micro_batch_size=16),
               f"packed_{pack_length * 4}": dict(micro_batch_size=1, pack_length=pack_length * 4)}
    spec = LearnerSpec(model=ModelSection(path=str(model)), optim=OptimSection(lr=1e-6), deepspeed=DeepSpeedSection(
        enabled=False), lora=LoraSection(), micro_batch_size=1, accumulation=1, total_steps=100, cpus_per_worker=2)
    learner = Learner(spec)
    kwargs = dict(world_size=1, loss="grpo_clip", aggregation="token", eps_low=0.2, eps_high=0.272, tis_cap=None,
                  kl_coef=0.0, temperature=1.0)
    times: dict[str, list[float]] = {name: [] for name in layouts}
    forwards: dict[str, int] = {}
    for rep in range(args.repeats + 1):  # the first round warms up
        for name, layout in (layouts.items() if rep % 2 else reversed(layouts.items())):
            plan = plan_update(samples, minibatches=1, world_size=1, aggregation="token", pad_id=0, seed=0, **layout)
            start = time.perf_counter()
            learner.train_step(plan.batches[0][0], policy_loss_fn, normalizer=plan.normalizers[0], **kwargs)
            if rep:
                times[name].append(time.perf_counter() - start)
            forwards[name] = len(plan.batches[0][0])
    result = {name: {"update_s": statistics.median(t), "spread_s": [min(t), max(t)], "forward_passes": forwards[name]}
              for name, t in times.items()}
    packed = result[f"packed_{pack_length * 4}"]["update_s"]
    for name in ("padded_mb1", "padded_mb16"):
        result[f"speedup_vs_{name}"] = result[name]["update_s"] / packed
    for name, r in result.items():
        if isinstance(r, dict):
            print(f"  (p) {name}: {r['update_s']:.2f} s per update ({r['forward_passes']} forward passes; "
                  f"min {r['spread_s'][0]:.2f}, max {r['spread_s'][1]:.2f})", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=("instruct", "think"), default="instruct")
    parser.add_argument("--checkpoint", type=Path, help="default: runs/demo/VARIANT/dpo/checkpoint (make demo)")
    parser.add_argument("--data", type=Path, default=REPO / "runs/tiny/data/rlvr")
    parser.add_argument("--out", type=Path, default=REPO / "runs/bench/rlvr")
    parser.add_argument("--parts", default="abcp")
    parser.add_argument("--engine", choices=("vllm", "hf"), default="vllm",
                        help="(a, b) this stage's rollout engine (default: vllm, as every recipe above the tiny ones)")
    parser.add_argument("--steps-a", type=int, default=8, help="(a) steps per run")
    parser.add_argument("--steps-b", type=int, default=120, help="(b) most steps per side")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--eval-prompts", type=int, default=100)
    parser.add_argument("--target-gain", type=float, default=0.10, help="(b) pass-rate gain both sides must reach")
    parser.add_argument("--trl-budget", type=float, default=1800, help="(b) TRL's training seconds at most")
    parser.add_argument("--engine-prompts", type=int, default=8, help="(c) prompts per generate call")
    parser.add_argument("--repeats", type=int, default=3, help="(p) timed updates per layout")
    parser.add_argument("--trl-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trl_worker:
        trl_worker(json.loads(args.trl_worker))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"engine": args.engine, "variant": args.variant}
    args.checkpoint = args.checkpoint or REPO / f"runs/demo/{args.variant}/dpo/checkpoint"
    if set(args.parts) & {"a", "b", "p"}:
        if not (args.checkpoint / "config.json").is_file():
            print(f"no checkpoint at {args.checkpoint}: run `make demo` (or pass --checkpoint)", file=sys.stderr)
            return 2
        model, params = deepen(args.checkpoint, args.out / "model")
        print(f"model: {args.checkpoint} deepened to {params / 1e6:.1f}M parameters; {PROMPTS} prompts x {SAMPLES} "
              f"samples, up to {MAX_TOKENS} tokens", flush=True)
    if "a" in args.parts:
        results["a"] = part_a(model, args.data, args.out, args.steps_a, args)
    if "b" in args.parts:
        results["b"] = part_b(model, args.data, args.out, args)
    if "c" in args.parts:
        results["c"] = part_c(args.out, args.engine_prompts)
    if "p" in args.parts:
        results["p"] = part_p(model, args.data, args)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print("\nratios (target: a <= 0.7, b <= 0.5)")
    if "a" in results:
        a = results["a"]
        print(f"  (a) async k=1 / sync step time: {a['ratio']:.2f}x ({a['k1']['step_s']:.2f} / {a['k0']['step_s']:.2f} s)")
        if "colocated_ratio" in a:
            print(f"  (a) on-policy, engine colocated with the learner (sleeping through updates) / not: "
                  f"{a['colocated_ratio']:.2f}x ({a['k0_colocated']['step_s']:.2f} / {a['k0']['step_s']:.2f} s)")
        if "inflight_ratio" in a:
            print(f"  (a) async with in-flight updates / without: {a['inflight_ratio']:.2f}x "
                  f"({a['k1_inflight']['step_s']:.2f} / {a['k1']['step_s']:.2f} s; responses switched mid-way "
                  f"{a['k1_inflight']['switched_frac']:.2f}, token staleness {a['k1_inflight']['staleness_token_mean']:.2f})")
    if "b" in results:
        b = results["b"]
        if b["ratio"] is not None:
            print(f"  (b) stage / TRL GRPOTrainer, time to pass@1 {b['target']:.3f}: {b['ratio']:.2f}x "
                  f"({b['stage']['time_to_target_s']:.0f} / {b['trl']['time_to_target_s']:.0f} s of training; "
                  f"start-up {b['stage']['startup_s']:.0f} / {b['trl']['startup_s']:.0f} s)")
        else:
            print(f"  (b) target pass@1 {b['target']:.3f} not reached by both: stage "
                  f"{b['stage']['time_to_target_s']}, TRL {b['trl']['time_to_target_s']} (seconds of training)")
    if "c" in results:
        print(f"  (c) vLLM / hf generated tokens/s: {results['c']['ratio']:.2f}x")
    if "p" in results:
        p = results["p"]
        print(f"  (p) packed update speed-up (target >= 2x): {p['speedup_vs_padded_mb1']:.2f}x against micro-batch 1, "
              f"{p['speedup_vs_padded_mb16']:.2f}x against micro-batch 16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
