"""OrthoGrad over several processes: time and bytes communicated per step, global vs per-rank projection.

    python benchmarks/bench_distributed.py                    # CPU: 1 process, then 2 (gloo), same global batch
    python benchmarks/bench_distributed.py --device cuda      # GPU: 1 process, then --processes GPUs (nccl)

The driver runs this file once per process count through `accelerate launch` and prints one table. Every worker
builds the same random-init Whisper (the shapes of `bench_orthograd.py`) with LoRA r=8 on q/k/v/out_proj, wraps it
in DDP, and times `training_step` (forward, capture, projection, surrogate backward with DDP's gradient all-reduce)
for:

- `graddiff`: the floor, one DDP gradient all-reduce per step;
- `orthograd-global`: the projection against every process's retain samples (all-gather of n_r×P per-sample LoRA
  gradients, DESIGN §5) — what one process with the whole batch computes;
- `orthograd-local`: each process against its own retain samples (`projection_scope="local"`), no extra traffic.

Global batch: m forget + k retain examples, split evenly over the processes. "projection bytes" counts what this
process sends through explicit collectives during a step (measured by wrapping `torch.distributed`'s all_gather /
all_reduce); "gradient bytes" is the trainable parameters' size, which DDP all-reduces on every step of every method.
On a CPU with fewer cores than processes×threads the 2-process times measure contention as much as communication:
compare methods within one process count. Not a test: nothing is asserted.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
METHODS = ("graddiff", "orthograd-global", "orthograd-local")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--config", default="tiny", choices=["tiny", "base"], help="model shape (bench_orthograd)")
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--forget", type=int, default=8, help="global forget batch m")
    parser.add_argument("--retain", type=int, default=16, help="global retain batch k")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--label-tokens", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    parser.add_argument("--output", default=None, help="JSON path (default: results/bench_distributed_<device>.json)")
    parser.add_argument("--worker-output", default=None, help=argparse.SUPPRESS)
    return parser


class CollectiveCounter:
    """Counts bytes sent through torch.distributed's all_gather / all_reduce while enabled."""

    def __init__(self):
        import torch.distributed as dist

        self.dist, self.bytes, self.enabled = dist, 0, False
        self._originals = {name: getattr(dist, name) for name in ("all_gather", "all_reduce")}
        for name, original in self._originals.items():
            setattr(dist, name, self._wrap(original))

    def _wrap(self, original):
        def counted(*args, **kwargs):
            if self.enabled:
                tensor = args[1] if original is self._originals["all_gather"] else args[0]
                self.bytes += tensor.numel() * tensor.element_size()
            return original(*args, **kwargs)

        return counted


def worker(args) -> None:
    import torch
    from accelerate import PartialState
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    sys.path.insert(0, str(HERE))
    from bench_orthograd import whisper_config

    from hf_unlearn import GradDiffConfig, GradDiffTrainer, OrthoGradConfig, OrthoGradTrainer

    torch.set_num_threads(args.threads)
    counter = CollectiveCounter()  # before the trainers import the collectives they call
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    state = PartialState(cpu=args.device == "cpu", backend="gloo" if args.device == "cpu" and several else None)
    world, rank = state.num_processes, state.process_index
    m, k = args.forget // world, args.retain // world

    torch.manual_seed(0)
    config = whisper_config(args.config, args.frames, args.vocab)
    model = WhisperForConditionalGeneration(config)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"], lora_dropout=0.0)
    model = get_peft_model(model, lora).to(state.device)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.02)  # peft's zero init would make every lora_A gradient zero
    trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)

    def batch(n: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        features = torch.randn(n, 80, args.frames, generator=generator)
        labels = torch.randint(3, config.vocab_size, (n, args.label_tokens), generator=generator)
        return {"input_features": features.to(state.device), "labels": labels.to(state.device)}

    forget, retain = batch(m, 10 + rank), batch(k, 20 + rank)
    placeholder = Dataset.from_list([{"x": 0}] * max(m, k))
    common = dict(
        output_dir="/tmp/bench_distributed",
        allow_overlap=True,  # one placeholder dataset for both streams; the batches are fixed below
        per_device_train_batch_size=m,
        per_device_retain_batch_size=k,
        use_cpu=args.device == "cpu",
        report_to="none",
        learning_rate=1e-5,
        max_grad_norm=0.0,
    )
    specs = {
        "graddiff": (GradDiffTrainer, GradDiffConfig(**common, retain_weight=1.0)),
        "orthograd-global": (OrthoGradTrainer, OrthoGradConfig(**common, projection_scope="global")),
        "orthograd-local": (OrthoGradTrainer, OrthoGradConfig(**common, projection_scope="local")),
    }
    trainers = {}
    for method, (trainer_cls, method_args) in specs.items():
        trainer = trainer_cls(model=model, args=method_args, forget_dataset=placeholder, retain_dataset=placeholder)
        trainer.next_retain_batch = lambda: retain  # the same fixed retain batch for every method and step
        trainer.current_gradient_accumulation_steps = 1  # set by train(), which the benchmark does not call
        trainers[method] = trainer
    wrapped = trainers["graddiff"].accelerator.prepare_model(model)  # DDP with more than one process

    times = {method: [] for method in METHODS}
    sent = {method: 0 for method in METHODS}
    for repeat in range(args.warmup + args.repeats):
        for method in METHODS:  # interleaved: machine load hits every method alike
            model.zero_grad(set_to_none=True)
            state.wait_for_everyone()
            counter.bytes, counter.enabled = 0, True
            start = time.perf_counter()
            trainers[method].training_step(wrapped, forget)
            if args.device == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            counter.enabled = False
            if repeat >= args.warmup:
                times[method].append(elapsed)
                sent[method] = counter.bytes
    rows = [
        {
            "processes": world,
            "method": method,
            "per_process_forget": m,
            "per_process_retain": k,
            "step_ms": 1000 * statistics.median(times[method]),
            "projection_bytes": sent[method],
            "gradient_bytes": trainable_bytes if world > 1 else 0,
        }
        for method in METHODS
    ]
    if rank == 0:
        Path(args.worker_output).write_text(json.dumps(rows))


def run_workers(args) -> list[dict]:
    rows = []
    for processes in args.processes:
        output = Path(f"/tmp/bench_distributed_{processes}.json")
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
        if processes > 1:
            command += ["--multi_gpu"]  # with use_cpu below, the only way to get N connected CPU processes
        if args.device == "cpu":
            command += ["--num_cpu_threads_per_process", str(args.threads)]
        worker_keys = ("device", "config", "forget", "retain", "frames", "label_tokens", "vocab", "warmup", "repeats")
        forwarded = [f"--{key.replace('_', '-')}={getattr(args, key)}" for key in (*worker_keys, "threads")]
        command += [__file__, *forwarded, "--worker-output", str(output)]
        env = {**os.environ, "ACCELERATE_USE_CPU": "true" if args.device == "cpu" else "false"}
        subprocess.run(command, check=True, env=env)
        rows += json.loads(output.read_text())
    return rows


def main(args) -> None:
    if args.worker_output:
        worker(args)
        return
    import torch

    rows = run_workers(args)
    base = {row["processes"]: row["step_ms"] for row in rows if row["method"] == "graddiff"}
    print(
        f"\nOrthoGrad over processes — {args.config} Whisper, global batch {args.forget}+{args.retain}, {args.device}"
    )
    print(
        "| processes | method | per-process m+k | step (ms) | × GradDiff | projection bytes/step | gradient bytes/step |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        row["ratio_to_graddiff"] = row["step_ms"] / base[row["processes"]]
        print(
            f"| {row['processes']} | {row['method']} | {row['per_process_forget']}+{row['per_process_retain']} | "
            f"{row['step_ms']:.1f} | {row['ratio_to_graddiff']:.2f} | {row['projection_bytes']:,} | "
            f"{row['gradient_bytes']:,} |"
        )
    output = Path(args.output or HERE / "results" / f"bench_distributed_{args.device}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}
    if args.device == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(0)
    settings = {key: value for key, value in vars(args).items() if key not in ("output", "worker_output")}
    output.write_text(json.dumps({"machine": machine, "settings": settings, "rows": rows}, indent=2))
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main(make_parser().parse_args())
