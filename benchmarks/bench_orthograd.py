"""Per-step cost of OrthoGrad (fused capture, per-sample loop, torch.func vmap) against a GradDiff step.

    python benchmarks/bench_orthograd.py                              # CPU: tiny + whisper-base-sized, small inputs
    python benchmarks/bench_orthograd.py --device cuda --dtype bf16   # GPU: 30 s inputs (3000 frames), bf16 autocast
    python benchmarks/bench_orthograd.py --params full --methods graddiff fused per_tensor preconditioned vmap

What runs, on the same random-init Whisper and the same batches (m forget examples, k retain examples,
k ∈ {4, 16, 64}), training LoRA r=8 on q/k/v/out_proj (`--params lora`) or every parameter (`--params full`: the
output projection is untied from the token embedding and the decoder's learned positions are frozen, the two things
the fused capture cannot read per sample; everything else — Conv1d, Linear, Embedding, LayerNorm — is trained):

- `graddiff`: `GradDiffTrainer.training_step` (forget forward, retain forward, one backward): the floor.
- `fused`: `OrthoGradTrainer.training_step` with the fused capture (one forward + one backward of the joint batch).
- `loop`: the published re-implementations' way, written here only: one backward for g_f, then one forward+backward
  per retain example, flattened gradients, the same solve, the same surrogate backward.
- `vmap`: `OrthoGradTrainer.training_step` with `per_sample_gradients="vmap"` (torch.func, eager attention).
- `per_tensor`, `preconditioned`: `fused` with `projection_granularity="per_tensor"` / `projection_space=
  "preconditioned"` (the latter forms D-weighted Grams from materialised per-sample gradients, one layer at a time).

`training_step` only: the optimizer step is identical for every method and left out. Methods are interleaved within
each repetition so that load on a shared machine hits them alike; time is the median after warm-up.

Passes per step are counted with a forward hook on the Whisper model (one count per forward call, batched or not; the
vmapped forward of torch.func is one call) and, for backward passes, the autograd engine runs
(`torch.autograd.backward` / `grad` calls) during which a gradient hook on the model's logits fired.

Peak memory: CUDA `max_memory_allocated` above the allocation before the step. On CPU, the kernel's peak RSS (VmHWM,
reset through /proc/self/clear_refs before each step) above the RSS before the step; glibc's mmap threshold is pinned
by re-executing the script so that large freed tensors go back to the kernel. Page-accurate, but only an approximation
of tensor memory (allocator caching, Python objects). Not a test: nothing is asserted.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path


MMAP_THRESHOLD = "65536"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 base, fp32 LoRA, autocast")
    parser.add_argument("--configs", nargs="+", default=["tiny", "base"], choices=["tiny", "base", "small"])
    parser.add_argument("--params", default="lora", choices=["lora", "full"], help="LoRA adapter or every parameter")
    parser.add_argument("--k", nargs="+", type=int, default=[4, 16, 64], help="retain batch sizes")
    parser.add_argument("--forget", type=int, default=8, help="forget batch size m")
    parser.add_argument("--frames", type=int, default=None, help="encoder input frames (default: 100 CPU, 3000 CUDA)")
    parser.add_argument("--label-tokens", type=int, default=None, help="target tokens (default: 16 CPU, 64 CUDA)")
    parser.add_argument("--vocab", type=int, default=None, help="base vocabulary (default: 8192 CPU, 51865 CUDA)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["graddiff", "fused", "loop", "vmap"],
        choices=["graddiff", "fused", "loop", "vmap", "per_tensor", "preconditioned"],
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--output", default=None, help="JSON path (default: results/bench_orthograd_<device>.json)")
    return parser


def whisper_config(name: str, frames: int, vocab: int):
    from transformers import WhisperConfig

    sizes = {
        "tiny": dict(
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=256,
            decoder_ffn_dim=256,
            vocab_size=1024,
        ),
        # openai/whisper-small's shape, random init (the GPU suite's)
        "small": dict(
            d_model=768,
            encoder_layers=12,
            decoder_layers=12,
            encoder_attention_heads=12,
            decoder_attention_heads=12,
            encoder_ffn_dim=3072,
            decoder_ffn_dim=3072,
            vocab_size=vocab,
        ),
        # openai/whisper-base's shape, random init
        "base": dict(
            d_model=512,
            encoder_layers=6,
            decoder_layers=6,
            encoder_attention_heads=8,
            decoder_attention_heads=8,
            encoder_ffn_dim=2048,
            decoder_ffn_dim=2048,
            vocab_size=vocab,
        ),
    }
    return WhisperConfig(
        **sizes[name],
        num_mel_bins=80,
        max_source_positions=frames // 2,
        max_target_positions=448,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=[],
        begin_suppress_tokens=[],
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )


class PassCounter:
    """Forward calls of the top model, and autograd engine runs (backward/grad calls) that reach its logits.

    A GradDiff backward of −L_f + L_r reaches the logits of both forwards but is one backward pass, hence engine runs
    rather than hook firings. The surrogate backward of OrthoGrad never reaches the model and is not counted.
    """

    def __init__(self, module):
        import torch

        self.forwards = self.backwards = 0
        self._reached = False
        self._handle = module.register_forward_hook(self._hook)
        self._originals = {"backward": torch.autograd.backward, "grad": torch.autograd.grad}
        for name, original in self._originals.items():
            setattr(torch.autograd, name, self._wrap(original))

    def _wrap(self, original):
        def run(*args, **kwargs):
            outer, self._reached = self._reached, False
            try:
                return original(*args, **kwargs)
            finally:
                self.backwards += int(self._reached)
                self._reached = outer

        return run

    def _hook(self, module, args, output):
        self.forwards += 1
        if output.logits.requires_grad:
            output.logits.register_hook(self._mark)

    def _mark(self, grad):
        self._reached = True

    def reset(self):
        self.forwards = self.backwards = 0

    def remove(self):
        import torch

        self._handle.remove()
        for name, original in self._originals.items():
            setattr(torch.autograd, name, original)


class PeakMemory:
    def __init__(self, device: str):
        self.device = device
        self.peak_mib = float("nan")

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB
        raise KeyError(field)

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self._start = self._status("VmRSS")
        return self

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - self._start) / 2**20
        else:
            self.peak_mib = (self._status("VmHWM") - self._start) / 1024


def build(name: str, args, k: int):
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    from hf_unlearn import GradDiffConfig, GradDiffTrainer, OrthoGradConfig, OrthoGradTrainer

    torch.manual_seed(0)
    config = whisper_config(name, args.frames, args.vocab)
    if args.params == "full":
        config.tie_word_embeddings = False
    model = WhisperForConditionalGeneration(config)
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    if args.params == "full":
        model.model.decoder.embed_positions.requires_grad_(False)
        model.to(args.device)
    else:
        lora = LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"], lora_dropout=0.0
        )
        model = get_peft_model(model, lora, autocast_adapter_dtype=True).to(args.device)
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.data = p.data.float()  # fp32 LoRA (peft already does this for bf16 bases; explicit for clarity)
                if "lora_B" in n:
                    p.data.normal_(0, 0.02)  # peft starts lora_B at zero, which would zero every lora_A gradient

    def batch(n: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        features = torch.randn(n, 80, args.frames, generator=generator)
        labels = torch.randint(3, config.vocab_size, (n, args.label_tokens), generator=generator)
        return {
            "input_features": features.to(args.device, torch.bfloat16 if args.dtype == "bf16" else torch.float32),
            "labels": labels.to(args.device),
        }

    forget, retain = batch(args.forget, 1), batch(k, 2)
    placeholder = Dataset.from_list([{"x": 0}] * max(k, args.forget))
    common = dict(
        output_dir="/tmp/bench_orthograd",
        allow_overlap=True,  # one placeholder dataset for both streams; the batches are fixed below
        per_device_train_batch_size=args.forget,
        per_device_retain_batch_size=k,
        use_cpu=args.device == "cpu",
        report_to="none",
        learning_rate=1e-5,
        max_grad_norm=0.0,
    )
    trainers = {}
    for method, (trainer_cls, config_cls, extra) in {
        "graddiff": (GradDiffTrainer, GradDiffConfig, {"retain_weight": 1.0}),
        "fused": (OrthoGradTrainer, OrthoGradConfig, {"per_sample_gradients": "fused", "retain_mix": 0.0}),
        "vmap": (OrthoGradTrainer, OrthoGradConfig, {"per_sample_gradients": "vmap", "retain_mix": 0.0}),
        "per_tensor": (
            OrthoGradTrainer,
            OrthoGradConfig,
            {"per_sample_gradients": "fused", "retain_mix": 0.0, "projection_granularity": "per_tensor"},
        ),
        "preconditioned": (
            OrthoGradTrainer,
            OrthoGradConfig,
            {
                "per_sample_gradients": "fused",
                "retain_mix": 0.0,
                "projection_space": "preconditioned",
                "optim": "sgd",
            },
        ),
    }.items():
        if method not in args.methods:
            continue
        trainer = trainer_cls(
            model=model,
            args=config_cls(**common, **extra),
            forget_dataset=placeholder,
            retain_dataset=placeholder,
            data_collator=lambda rows: rows,
        )
        trainer.next_retain_batch = lambda: retain  # the same fixed retain batch for every method and step
        trainer.current_gradient_accumulation_steps = 1  # set by train(), which the benchmark does not call
        trainers[method] = trainer
    return model, forget, retain, trainers


def loop_step(model, forget, retain, config):
    """OrthoGrad by a per-sample loop (α = 0): the reference cost, kept out of the library on purpose."""
    import torch

    from hf_unlearn.losses import model_per_example_loss
    from hf_unlearn.methods.orthograd.projection import stacked_orthograd_directions

    params = [p for p in model.parameters() if p.requires_grad]
    g_f = torch.cat(
        [g.flatten() for g in torch.autograd.grad(model_per_example_loss(model, forget, config).mean(), params)]
    ).float()
    rows = []
    for i in range(retain["labels"].shape[0]):
        single = {key: value[i : i + 1] for key, value in retain.items()}
        loss = model_per_example_loss(model, single, config)[0]
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]).float())
    G = torch.stack(rows)  # [k, P]
    direction = stacked_orthograd_directions((G @ G.T)[None], (G @ g_f)[None], 0.0)
    d = direction.retain_coefficients[0] @ G + direction.forget_coefficient * g_f
    surrogate, offset = 0, 0
    for p in params:
        surrogate = surrogate + (p * d[offset : offset + p.numel()].view_as(p).to(p.dtype)).sum()
        offset += p.numel()
    surrogate.backward()


def bench_cell(name: str, args, k: int) -> list[dict]:
    import torch

    model, forget, retain, trainers = build(name, args, k)
    counter = PassCounter(model.get_base_model() if args.params == "lora" else model)
    autocast = (lambda: torch.autocast(args.device, dtype=torch.bfloat16)) if args.dtype == "bf16" else nullcontext
    steps = {
        "graddiff": lambda: trainers["graddiff"].training_step(model, forget),
        "fused": lambda: trainers["fused"].training_step(model, forget),
        "loop": lambda: loop_step(model, forget, retain, model.config),
        "vmap": lambda: trainers["vmap"].training_step(model, forget),
        "per_tensor": lambda: trainers["per_tensor"].training_step(model, forget),
        "preconditioned": lambda: trainers["preconditioned"].training_step(model, forget),
    }
    steps = {m: steps[m] for m in args.methods}
    times = {m: [] for m in steps}
    stats = {}
    for repetition in range(args.warmup + args.repeats):
        for method, step in steps.items():
            model.zero_grad(set_to_none=True)
            counter.reset()
            memory = PeakMemory(args.device)
            with memory, autocast():
                start = time.perf_counter()
                step()
                if args.device == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
            if repetition >= args.warmup:
                times[method].append(elapsed)
                stats[method] = (memory.peak_mib, counter.forwards, counter.backwards)
    counter.remove()
    rows = []
    for method in steps:
        peak, forwards, backwards = stats[method]
        rows.append(
            {
                "config": name,
                "k": k,
                "m": args.forget,
                "method": method,
                "time_ms": 1000 * statistics.median(times[method]),
                "times_ms": [1000 * t for t in times[method]],
                "peak_mib": peak,
                "forwards": forwards,
                "backwards": backwards,
            }
        )
    floor = next((r for r in rows if r["method"] == "graddiff"), None)
    for row in rows:
        row["time_vs_graddiff"] = row["time_ms"] / floor["time_ms"] if floor else None
        row["mem_vs_graddiff"] = row["peak_mib"] / floor["peak_mib"] if floor and floor["peak_mib"] > 0 else None
    return rows


def main(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = args.device == "cpu"
    args.frames = args.frames or (100 if cpu else 3000)
    args.label_tokens = args.label_tokens or (16 if cpu else 64)
    args.vocab = args.vocab or (8192 if cpu else 51865)
    memory_kind = "CUDA max_memory_allocated" if not cpu else "peak RSS delta (VmHWM, clear_refs)"
    print(
        f"OrthoGrad step cost — device={args.device} dtype={args.dtype} frames={args.frames} "
        f"label_tokens={args.label_tokens} base_vocab={args.vocab} m={args.forget} "
        f"{'LoRA r=8 on q/k/v/out_proj' if args.params == 'lora' else 'full parameters'}; "
        f"median of {args.repeats} after {args.warmup} warm-up; memory = {memory_kind}",
        flush=True,
    )
    if cpu and args.frames < 3000:
        print(
            f"NOTE: CPU run uses {args.frames} encoder frames (not 3000 = 30 s) and a {args.vocab}-token base "
            "vocabulary to stay within minutes; the GPU setting uses the full sizes.",
            flush=True,
        )
    header = (
        f"{'config':6} {'k':>3} {'method':9} {'ms/step':>9} {'x GD':>6} {'peak MiB':>9} {'x GD':>6} {'fwd':>4} "
        f"{'bwd':>4}"
    )
    print(header)
    print("-" * len(header), flush=True)

    suffix = "" if args.params == "lora" else "_full"
    output = Path(args.output or Path(__file__).parent / "results" / f"bench_orthograd_{args.device}{suffix}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if not cpu:
        machine["gpu"] = torch.cuda.get_device_name()
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    rows = []
    for name in args.configs:
        for k in args.k:
            cell = bench_cell(name, args, k)
            rows.extend(cell)
            for r in cell:
                ratio = f"{r['time_vs_graddiff']:.2f}" if r["time_vs_graddiff"] else "-"
                mem_ratio = f"{r['mem_vs_graddiff']:.2f}" if r["mem_vs_graddiff"] else "-"
                print(
                    f"{r['config']:6} {r['k']:>3} {r['method']:9} {r['time_ms']:>9.1f} {ratio:>6} "
                    f"{r['peak_mib']:>9.1f} {mem_ratio:>6} {r['forwards']:>4} {r['backwards']:>4}",
                    flush=True,
                )
            # Written after every cell, so an interrupted run keeps what it measured.
            output.write_text(
                json.dumps({"machine": machine, "settings": settings, "memory": memory_kind, "rows": rows}, indent=2)
            )
    print(f"\nwrote {output}")


if __name__ == "__main__":
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
        # Freed large tensors must leave the RSS, or one method's peak hides in the next one's baseline.
        os.environ["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD
        os.execv(sys.executable, [sys.executable, *sys.argv])
    main(make_parser().parse_args())
