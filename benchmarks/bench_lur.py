"""Step time and peak memory of LUR (exact and first-order) against a GradDiff step, in one process.

    python benchmarks/bench_lur.py                                  # CPU: tiny + whisper-base-sized, a few minutes
    python benchmarks/bench_lur.py --device cuda --dtype bf16       # GPU: 30 s inputs (3000 frames), bf16 base

Each method computes the trainable-parameter gradient of one step the way its trainer does (LURTrainer: the
`LURObjective` surrogate plus one backward, SDPA restricted to its math backend in second order; GradDiffTrainer: one
backward of −L_f + γ·L_r), on the same random-init Whisper with LoRA and the same forget/retain batches. `lur_*` use
LUR's default forget loss, NPO (π_ref scored each step with the adapter disabled, as the trainer does: one more
no-grad forward of the forget batch); `lur_*_ga` the gradient-ascent loss L_u = −L_f that GradDiff also uses. The
optimizer step itself is the same for all methods and left out. Methods are interleaved within each repetition so
that load on a shared machine hits them alike; the reported time is the median after warm-up.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` above what was allocated before the step. On CPU, the peak
of the process RSS above its value before the step, sampled every 0.5 ms by a thread (torch's CPU allocator is not
seen by tracemalloc); glibc's mmap threshold is pinned (`MALLOC_MMAP_THRESHOLD_`, set by re-executing the script) so
that freed tensors leave the RSS and one method's peak does not hide in the next one's baseline. CPU figures are
approximate to a few MiB. Not a test: nothing here asserts; targets are printed next to the ratios.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path


TARGETS = {"lur_exact": 1.8, "lur_first": 1.5, "lur_exact_ga": 1.8, "lur_first_ga": 1.5}
MMAP_THRESHOLD = "131072"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: bf16 base, fp32 LoRA, autocast"
    )
    parser.add_argument("--configs", nargs="+", default=["tiny", "base"], choices=["tiny", "base"])
    parser.add_argument("--frames", type=int, default=None, help="input frames (default: 400 on CPU, 3000 on CUDA)")
    parser.add_argument("--batch", type=int, default=None, help="forget = retain batch size (default: 4 CPU, 8 CUDA)")
    parser.add_argument("--label-tokens", type=int, default=32)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=["lur_exact", "lur_first", "lur_exact_ga", "lur_first_ga", "lur_exact_diag"],
        help="LUR variants timed against GradDiff (default: all)",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner-lr", type=float, default=1e-2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 on a shared CPU)")
    parser.add_argument(
        "--output", default=None, help="JSON path (default: benchmarks/results/bench_lur_<device>.json)"
    )
    return parser


def whisper_config(name: str, frames: int):
    from transformers import WhisperConfig

    sizes = {
        # d_model 64, 2+2 layers: the size of the embedded speech benchmark's models
        "tiny": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, vocab_size=1024),
        # openai/whisper-base's shape (74 M parameters), random init
        "base": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                     decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, vocab_size=51865),
    }  # fmt: skip
    return WhisperConfig(
        num_mel_bins=80, max_source_positions=frames // 2, max_target_positions=448, pad_token_id=50257,
        bos_token_id=50257, eos_token_id=50257, decoder_start_token_id=50258 if name == "base" else 1,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, **sizes[name],
    )  # fmt: skip


def build(name: str, args, device: str):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = whisper_config(name, args.frames)
    if name == "tiny":
        config.pad_token_id = config.bos_token_id = config.eos_token_id = 0
    model = WhisperForConditionalGeneration(config)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])  # fmt: skip
    model = get_peft_model(model, lora)
    if args.dtype == "bf16":
        model.to(torch.bfloat16)
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.float()  # fp32 adapter on a bf16 base, as in mixed-precision LoRA runs
    model.to(device).train()

    generator = torch.Generator().manual_seed(1)

    def batch():
        features = torch.randn(args.batch, 80, args.frames, generator=generator)
        labels = torch.randint(2, config.vocab_size // 2, (args.batch, args.label_tokens), generator=generator)
        labels[1:, -args.label_tokens // 4 :] = -100  # ragged targets, as real transcripts are
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        return {"input_features": features.to(device, dtype), "labels": labels.to(device)}

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return model, batch(), batch(), {"trainable_params": trainable, "total_params": total}


def step_functions(model, forget, retain, inner_lr: float, gamma: float = 1.0):
    import torch

    from hf_unlearn import LURTrainer
    from hf_unlearn.losses import model_per_example_loss, model_sequence_log_prob, npo_per_example_loss
    from hf_unlearn.methods.lur.meta import LURObjective, batch_loss_fn, trainable_parameters

    def graddiff():
        loss = -model_per_example_loss(model, forget).mean() + gamma * model_per_example_loss(model, retain).mean()
        loss.backward()

    def npo_unlearn_fn():
        # as `LURTrainer._unlearn_at` with forget_loss="npo" (the default): π_ref scored once per step, no gradient,
        # adapter disabled; L_u = mean NPO term
        config = model.config
        with torch.no_grad(), model.disable_adapter():
            ref_log_prob = model_sequence_log_prob(model, forget, config)[0]

        def loss(module, inputs):
            return npo_per_example_loss(model_sequence_log_prob(module, inputs, config)[0], ref_log_prob, 0.1).mean()

        return batch_loss_fn(model, forget, loss=loss, config=config)

    def lur(meta_order: str, diagnostics: bool = False, forget_loss: str = "ga"):
        objective = LURObjective(inner_lr, gamma, meta_order=meta_order)

        def run():
            if forget_loss == "npo":
                unlearn_fn = npo_unlearn_fn()
            else:
                forget_fn = batch_loss_fn(model, forget)
                unlearn_fn = lambda p: -forget_fn(p)  # noqa: E731
            if meta_order == "second":  # as LURTrainer: the forward differentiated twice runs SDPA's math backend
                unlearn_fn = LURTrainer._twice_differentiable(unlearn_fn)
            step = objective(
                trainable_parameters(model), unlearn_fn, batch_loss_fn(model, retain), compute_diagnostics=diagnostics
            )
            step.loss.backward()

        return run

    # the first second-order call also runs its one-off double-backward check: warm-up absorbs it
    return {
        "graddiff": graddiff,
        "lur_exact": lur("second", forget_loss="npo"),  # LUR's default forget loss
        "lur_first": lur("first", forget_loss="npo"),
        "lur_exact_ga": lur("second"),
        "lur_first_ga": lur("first"),
        "lur_exact_diag": lur("second", diagnostics=True, forget_loss="npo"),
    }, torch


class PeakMemory:
    """Peak bytes above the value at entry: CUDA allocator stats, or sampled RSS on CPU."""

    def __init__(self, device: str):
        self.device = device
        self.peak = 0

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        import psutil

        self._process = psutil.Process()
        self._base = self._max = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, self._process.memory_info().rss)
            time.sleep(0.0005)

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._max = max(self._max, self._process.memory_info().rss)
            self._stop.set()
            self._thread.join()
            self.peak = self._max - self._base


def bench_config(name: str, args) -> dict:
    model, forget, retain, sizes = build(name, args, args.device)
    functions, torch = step_functions(model, forget, retain, args.inner_lr)
    if args.methods:
        functions = {method: fn for method, fn in functions.items() if method == "graddiff" or method in args.methods}
    autocast = (lambda: torch.autocast(args.device, dtype=torch.bfloat16)) if args.dtype == "bf16" else nullcontext
    params = [p for p in model.parameters() if p.requires_grad]

    def timed(fn) -> float:
        for p in params:
            p.grad = None
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast():
            fn()
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times = {method: [] for method in functions}
    for repeat in range(args.warmup + args.repeats):
        for method, fn in functions.items():  # interleaved: a load spike hits every method alike
            elapsed = timed(fn)
            if repeat >= args.warmup:
                times[method].append(elapsed)
    memory = {}
    for method, fn in functions.items():
        for p in params:
            p.grad = None
        with PeakMemory(args.device) as peak, autocast():
            fn()
        memory[method] = peak.peak
    results = {
        method: {
            "median_s": statistics.median(values),
            "min_s": min(values),
            "max_s": max(values),
            "peak_mem_mib": memory[method] / 2**20,
        }
        for method, values in times.items()
    }
    base = results["graddiff"]
    for row in results.values():
        row["time_ratio"] = row["median_s"] / base["median_s"]
        row["mem_ratio"] = row["peak_mem_mib"] / base["peak_mem_mib"] if base["peak_mem_mib"] > 0 else None
    del model
    return {"config": name, **sizes, "methods": results}


def main(args) -> None:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available.")
    if args.frames is None:
        args.frames = 3000 if args.device == "cuda" else 400
    if args.batch is None:
        args.batch = 8 if args.device == "cuda" else 4
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = [bench_config(name, args) for name in args.configs]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'cpu'}"
    report = {
        "device": args.device,
        "device_name": device_name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "frames": args.frames,
        "batch_forget": args.batch,
        "batch_retain": args.batch,
        "label_tokens": args.label_tokens,
        "lora_r": args.lora_r,
        "inner_lr": args.inner_lr,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "memory_measure": "cuda.max_memory_allocated" if args.device == "cuda" else "sampled RSS (psutil, 0.5 ms)",
        "targets_time_ratio": TARGETS,
        "torch": torch.__version__,
        "results": rows,
    }
    output = Path(args.output or Path(__file__).parent / "results" / f"bench_lur_{args.device}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))

    print(f"\n{device_name} ({args.device}, {torch.get_num_threads()} threads), {args.dtype}, {args.frames} frames, "
          f"batch {args.batch}+{args.batch}, {args.label_tokens} label tokens, LoRA r={args.lora_r} on q/k/v/out")  # fmt: skip
    header = (
        f"{'config':<6} {'method':<15} {'median ms':>10} {'× GradDiff':>11} {'target':>7} {'peak MiB':>9} {'× mem':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        for method, r in row["methods"].items():
            target = f"≤{TARGETS[method]}" if method in TARGETS else ""
            mem_ratio = f"{r['mem_ratio']:.2f}" if r["mem_ratio"] is not None else "n/a"
            print(f"{row['config']:<6} {method:<15} {1e3 * r['median_s']:>10.1f} {r['time_ratio']:>11.2f} "
                  f"{target:>7} {r['peak_mem_mib']:>9.1f} {mem_ratio:>6}")  # fmt: skip
    print(f"\nwrote {output}")


if __name__ == "__main__":
    arguments = make_parser().parse_args()
    if arguments.device == "cpu" and os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
        # glibc raises its mmap threshold after frees, after which freed tensors stay in the RSS: pin it first.
        os.environ["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD
        os.execv(sys.executable, [sys.executable, *sys.argv])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(arguments)
