"""One command for the step cost of every gradient-surgery and meta method, on GPU-sized models (issue #21).

    python benchmarks/gpu_suite.py --output-dir benchmarks/results/gpu_suite      # CUDA: full shapes, bf16, ≤ 8 min
    python benchmarks/gpu_suite.py --quick --output-dir /tmp/gpu_suite_quick      # CPU: tiny shapes, seconds
    bash benchmarks/gpu_suite.sh                                                  # the CUDA line above

Methods, each a real trainer's `training_step` on the same model and the same fixed batches (m forget + k retain,
k ∈ {4, 16, 64}), except `loop`, which exists only here: `graddiff` (the floor), `orthograd_fused`,
`orthograd_vmap`, `loop` (OrthoGrad by one backward per retain example, `bench_orthograd.loop_step`), `gru`,
`lur_first`, `lur_exact` (LUR with its default NPO forget loss). The optimizer step is the same for all and left
out. OrthoGrad/loop run with α = `retain_mix` = 0, so that `loop` computes the same direction as `fused`.

Models (`--quick` in brackets), all random-init from a config, nothing downloaded:

- `whisper`: whisper-small's shape (d_model 768, 12+12 layers) [whisper-tiny-like d_model 64, 2+2], LoRA r=8 on
  q/k/v/out_proj (lora_B drawn N(0, 0.02) so that lora_A gradients are not zero), 30 s input = 3000 frames
  [100], 64 target tokens [16], SDPA attention.
- `llama`: Llama-3.2-1B's shape (hidden 2048, 16 layers, GQA 32/8, vocab 128256) [hidden 64, 2 layers], LoRA r=8 on
  every projection, 256-token sequences [32], SDPA attention.
- `classifier`: full-parameter fine-tuning of a ResNet, BatchNorm frozen (eval statistics, as the classifier recipe
  does; its affine weights train, through the fused capture's frozen-BN sampler):
  ResNet-18's stage shape on 32×32 RGB [the project's tiny digits ResNet on 8×8 grey].

On CUDA the base runs in bf16 and the adapter in fp32 under bf16 autocast (the classifier: fp32 weights under bf16
autocast), `--dtype fp32` to turn it off; on CPU everything is fp32.

Measured per (model, k, method): wall time per step (median after warm-up; `torch.cuda.synchronize` before the clock
stops), peak memory above the memory before the step (CUDA `max_memory_allocated`; on CPU the kernel's peak RSS,
VmHWM reset through /proc/self/clear_refs — page-accurate but only an approximation of tensor memory), and from one
further step under `torch.profiler` the share of kernel time in each phase: `forward` (inside the model's forward,
marked by a `record_function` label from forward hooks), `backward` (ops run by the autograd engine, first and
second order alike), `other` (projection maths, solves, surrogates), with `cast` (`aten::copy_`/`_to_copy`) as a
cross-cutting share. Kernel time is CUDA device time on CUDA and the self CPU time of `aten::` ops on CPU.

Unattended: every result is written to `--output-dir` (`gpu_suite.json` after each cell, `gpu_suite.md` at the
end), a failure of one case (OOM, an op without a batching rule, ...) is recorded with its error in the JSON and the
suite goes on, and a time budget skips (and records as skipped) what would not fit. Not a test: nothing here
asserts a speed; targets are printed next to the ratios.
"""

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, reused rather than rewritten

import bench_orthograd  # noqa: E402


METHODS = ("graddiff", "orthograd_fused", "orthograd_vmap", "loop", "gru", "lur_first", "lur_exact")
MODELS = ("whisper", "llama", "classifier")
TARGETS = {  # × GradDiff wall time at k = 16 (issue #21)
    "orthograd_fused": 1.25,
    "lur_first": 1.5,
    "lur_exact": 1.8,
}
PHASES = ("forward", "backward", "other")
FORWARD_LABEL = "gpu_suite/forward"
CAST_OPS = ("aten::copy_", "aten::_to_copy")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (CPU, CI); the default is the GPU shapes")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--k", nargs="+", type=int, default=[4, 16, 64], help="retain batch sizes")
    parser.add_argument("--forget", type=int, default=8, help="forget batch size m")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per method (fewer past --method-time-s)")
    parser.add_argument(
        "--method-time-s", type=float, default=6.0, help="stop timing a method after this much (≥ 2 timed steps)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=450.0, help="skip (and record) cases once the suite has run this long"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled step (no phase shares)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results/gpu_suite"))
    return parser


# ----------------------------------------------------------------------------------------------------- models


def whisper_model(quick: bool):
    from transformers import AutoModelForSpeechSeq2Seq

    frames, tokens, vocab = (100, 16, 1024) if quick else (3000, 64, 51865)
    config = bench_orthograd.whisper_config("tiny" if quick else "small", frames, vocab)
    model = AutoModelForSpeechSeq2Seq.from_config(config, attn_implementation="sdpa")

    def batch(n: int, generator):
        import torch

        features = torch.randn(n, 80, frames, generator=generator)
        labels = torch.randint(3, vocab, (n, tokens), generator=generator)
        labels[n // 2 :, -tokens // 4 :] = -100  # ragged targets, as real transcripts are
        return {"input_features": features, "labels": labels}

    shape = {"d_model": config.d_model, "layers": f"{config.encoder_layers}+{config.decoder_layers}",
             "frames": frames, "label_tokens": tokens, "vocab": vocab}  # fmt: skip
    return model, ["q_proj", "k_proj", "v_proj", "out_proj"], batch, shape


def llama_model(quick: bool):
    from transformers import AutoModelForCausalLM, LlamaConfig

    if quick:
        sizes = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=1024)  # fmt: skip
        tokens = 32
    else:  # Llama-3.2-1B's shape
        sizes = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0)  # fmt: skip
        tokens = 256
    config = LlamaConfig(**sizes, max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")

    def batch(n: int, generator):
        import torch

        input_ids = torch.randint(3, config.vocab_size, (n, tokens), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[n // 2 :, -tokens // 4 :] = 0  # right padding on half the batch
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    shape = {"hidden": config.hidden_size, "layers": config.num_hidden_layers, "tokens": tokens,
             "vocab": config.vocab_size}  # fmt: skip
    return model, targets, batch, shape


def classifier_model(quick: bool):
    import torch

    from hf_unlearn.models.batch_norm import freeze_batch_norm
    from hf_unlearn.models.tiny_classifier import build_tiny_classifier

    if quick:
        model, channels, size = build_tiny_classifier(), 1, 8
    else:  # ResNet-18's stages on CIFAR-sized input
        model = build_tiny_classifier(num_channels=3, embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                                      depths=[2, 2, 2, 2])  # fmt: skip
        channels, size = 3, 32
    freeze_batch_norm(model)

    def batch(n: int, generator):
        return {
            "pixel_values": torch.randn(n, channels, size, size, generator=generator),
            "labels": torch.randint(0, model.config.num_labels, (n,), generator=generator),
        }

    shape = {"image": f"{channels}x{size}x{size}", "hidden_sizes": model.config.hidden_sizes}
    return model, None, batch, shape


BUILDERS = {"whisper": whisper_model, "llama": llama_model, "classifier": classifier_model}


def prepare(name: str, args):
    """The model on its device and dtype, its trainable parameters, and a batch maker; LoRA unless `classifier`."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    with torch.device(args.device):  # random init on the device: a 1B model initialises in seconds there
        model, targets, make_batch, shape = BUILDERS[name](args.quick)
    bf16 = args.dtype == "bf16"
    if targets is not None:
        if bf16:
            model = model.to(torch.bfloat16)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules=targets, lora_dropout=0.0)
        model = get_peft_model(model, lora, autocast_adapter_dtype=True)
        for param_name, param in model.named_parameters():
            if param.requires_grad:
                param.data = param.data.float()  # fp32 adapter on a (bf16) base
                if "lora_B" in param_name:
                    param.data.normal_(0, 0.02)  # peft's zero lora_B would zero every lora_A gradient
    model.to(args.device)
    input_dtype = torch.bfloat16 if bf16 and targets is not None else torch.float32

    def batch(n: int, seed: int):
        values = make_batch(n, torch.Generator().manual_seed(seed))
        return {
            key: value.to(args.device, input_dtype if value.is_floating_point() else value.dtype)
            for key, value in values.items()
        }

    shape["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shape["total_params"] = sum(p.numel() for p in model.parameters())
    shape["adapter"] = (
        "LoRA r=8 on " + "/".join(targets) if targets else "every parameter (BatchNorm frozen: eval statistics)"
    )
    return model, batch, shape


def make_trainers(model, args, methods) -> dict:
    """One trainer per method on the same model; the retain batch is set per cell through `next_retain_batch`."""
    from datasets import Dataset

    from hf_unlearn import (
        GradDiffConfig,
        GradDiffTrainer,
        GRUConfig,
        GRUTrainer,
        LURConfig,
        LURTrainer,
        OrthoGradConfig,
        OrthoGradTrainer,
    )

    specs = {
        "graddiff": (GradDiffTrainer, GradDiffConfig, {"retain_weight": 1.0}),
        "orthograd_fused": (OrthoGradTrainer, OrthoGradConfig, {"per_sample_gradients": "fused", "retain_mix": 0}),
        "orthograd_vmap": (OrthoGradTrainer, OrthoGradConfig, {"per_sample_gradients": "vmap", "retain_mix": 0}),
        "gru": (GRUTrainer, GRUConfig, {}),
        "lur_first": (LURTrainer, LURConfig, {"meta_order": "first", "diagnostics_every": 0}),
        "lur_exact": (LURTrainer, LURConfig, {"meta_order": "second", "diagnostics_every": 0}),
    }
    placeholder = Dataset.from_list([{"x": 0}] * args.forget)
    common = dict(
        output_dir=tempfile.mkdtemp(prefix="gpu_suite_"),  # nothing is saved; kept out of the results folder
        allow_overlap=True,  # one placeholder dataset for both streams; the batches are fixed by the suite
        per_device_train_batch_size=args.forget,
        use_cpu=args.device == "cpu",
        report_to="none",
        learning_rate=1e-5,
        max_grad_norm=0.0,
    )
    trainers = {}
    for method in methods:
        if method == "loop":
            continue
        trainer_cls, config_cls, extra = specs[method]
        trainer = trainer_cls(
            model=model,
            args=config_cls(**common, **extra),
            forget_dataset=placeholder,
            retain_dataset=placeholder,
            data_collator=lambda rows: rows,
        )
        trainer.current_gradient_accumulation_steps = 1  # set by train(), which the suite does not call
        trainers[method] = trainer
    return trainers


# ---------------------------------------------------------------------------------------------- measurement


class ForwardLabel:
    """A `record_function` range around every call of ``module`` (nested calls, e.g. NPO's reference, included)."""

    def __init__(self, module):
        import torch

        self._ranges = []
        self._handles = [
            module.register_forward_pre_hook(self._enter),
            module.register_forward_hook(self._exit, always_call=True),
        ]
        self._record_function = torch.profiler.record_function

    def _enter(self, module, args):
        label = self._record_function(FORWARD_LABEL)
        label.__enter__()
        self._ranges.append(label)

    def _exit(self, module, args, output):
        self._ranges.pop().__exit__(None, None, None)

    def remove(self):
        for handle in self._handles:
            handle.remove()


def phase_shares(events, cuda: bool) -> dict:
    """Kernel time per phase from a profiler trace: each op's self time goes to its innermost marked ancestor."""
    from torch.autograd import DeviceType

    def own_time(event) -> float:
        if cuda:
            # CPU-side ops carry the device time of the kernels they launched; device-side events, where a torch
            # version lists them too, would count those kernels twice
            on_cpu = getattr(event, "device_type", None) in (None, DeviceType.CPU)
            return event.self_device_time_total if on_cpu else 0.0
        return event.self_cpu_time_total if event.name.startswith("aten::") else 0.0

    totals = dict.fromkeys(PHASES, 0.0)
    cast = 0.0
    for event in events:
        spent = own_time(event)
        if spent <= 0:
            continue
        phase, parent = "other", event
        while parent is not None:
            if parent.name.startswith("autograd::engine::evaluate_function"):
                phase = "backward"
                break
            if parent.name == FORWARD_LABEL:
                phase = "forward"
                break
            parent = parent.cpu_parent
        totals[phase] += spent
        if event.name in CAST_OPS:
            cast += spent
    total = sum(totals.values())
    shares = {phase: (value / total if total else None) for phase, value in totals.items()}
    return {"kernel_ms": total / 1e3, "shares": shares, "cast_share": cast / total if total else None}


def error_record(err: BaseException) -> dict:
    return {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500],
            "traceback": traceback.format_exc(limit=6)[-2000:]}  # fmt: skip


def measure_cell(model, trainers, forget, retain, args, methods, deadline: float) -> dict:
    """Time, memory and phase shares of each method on one (model, k); a failing method is recorded, not raised."""
    import torch

    cuda = args.device == "cuda"
    autocast = (lambda: torch.autocast(args.device, dtype=torch.bfloat16)) if args.dtype == "bf16" else nullcontext
    steps = {}
    for method in methods:
        if method == "loop":
            steps[method] = lambda: bench_orthograd.loop_step(model, forget, retain, model.config)
        else:
            trainers[method].next_retain_batch = lambda: retain  # the same fixed retain batch for every step
            steps[method] = (lambda trainer: lambda: trainer.training_step(model, forget))(trainers[method])

    results = {method: {"times_ms": []} for method in methods}
    failed = set()

    def run(method, record: bool) -> None:
        model.zero_grad(set_to_none=True)
        memory = bench_orthograd.PeakMemory(args.device)
        try:
            with memory, autocast():
                start = time.perf_counter()
                steps[method]()
                if cuda:
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
        except Exception as err:  # recorded for this method; the others and the rest of the suite go on
            results[method].update(error_record(err))
            failed.add(method)
        if method in failed:
            # after the except block, whose traceback keeps the failed step's tensors (an OOM's) alive
            model.zero_grad(set_to_none=True)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            return
        if record:
            results[method]["times_ms"].append(1e3 * elapsed)
            results[method]["peak_mib"] = max(results[method].get("peak_mib", 0.0), memory.peak_mib)

    # Interleaved: a load spike on a shared machine hits every method alike.
    for repetition in range(args.warmup + args.repeats):
        timed = repetition >= args.warmup
        for method in methods:
            if method in failed or time.perf_counter() > deadline:
                continue
            spent = sum(results[method]["times_ms"]) / 1e3
            if timed and len(results[method]["times_ms"]) >= 2 and spent > args.method_time_s:
                continue  # slow methods (the loop) stop at two timed steps
            run(method, record=timed)

    if not args.no_profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        label = ForwardLabel(model.get_base_model() if hasattr(model, "get_base_model") else model)
        try:
            for method in methods:
                if method in failed or time.perf_counter() > deadline:
                    continue
                model.zero_grad(set_to_none=True)
                try:
                    with profile(activities=activities) as prof, autocast():
                        steps[method]()
                        if cuda:
                            torch.cuda.synchronize()
                    results[method]["profile"] = phase_shares(prof.events(), cuda)
                    results[method]["profile"]["top_ops"] = top_ops(prof, cuda)
                except Exception as err:
                    results[method]["profile_error"] = error_record(err)["error"]
        finally:
            label.remove()
    model.zero_grad(set_to_none=True)

    for row in results.values():
        if row["times_ms"]:
            row["time_ms"] = statistics.median(row["times_ms"])
        elif "error" not in row:
            row["skipped"] = "time budget"
    floor = results.get("graddiff", {})
    for row in results.values():
        if "time_ms" in row and "time_ms" in floor:
            row["time_vs_graddiff"] = row["time_ms"] / floor["time_ms"]
        if row.get("peak_mib") and floor.get("peak_mib"):
            row["mem_vs_graddiff"] = row["peak_mib"] / floor["peak_mib"]
    return results


def top_ops(prof, cuda: bool, count: int = 8) -> list:
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda row: getattr(row, key), reverse=True)[:count]
    return [[row.key, round(getattr(row, key) / 1e3, 2), row.count] for row in rows]


# ------------------------------------------------------------------------------------------------- reporting


def markdown(report: dict) -> str:
    def fmt(value, pattern="{:.2f}"):
        return pattern.format(value) if value is not None else "–"

    lines = [
        f"# gpu_suite — {report['machine']['device_name']} ({report['settings']['device']}, "
        f"{report['settings']['dtype']}{', quick shapes' if report['settings']['quick'] else ''})",
        "",
        f"m = {report['settings']['forget']} forget examples + k retain; median of ≤ {report['settings']['repeats']} "
        f"steps after {report['settings']['warmup']} warm-up; memory = {report['memory_measure']}; phase shares = "
        f"{report['kernel_time']}. Load at start: {report['machine']['load_start']}; at end: "
        f"{report['machine'].get('load_end', '–')}.",
        "",
        "| model | k | method | ms/step | × GradDiff | target | peak MiB | × mem | fwd | bwd | other | cast |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in report["cells"]:
        for method, row in cell["methods"].items():
            if "time_ms" not in row:
                why = row.get("error") or row.get("skipped", "")
                lines.append(f"| {cell['model']} | {cell['k']} | {method} | {why[:90]} | | | | | | | | |")
                continue
            shares = row.get("profile", {}).get("shares", {})
            target = f"≤ {TARGETS[method]}" if method in TARGETS and cell["k"] == 16 else ""
            lines.append(
                f"| {cell['model']} | {cell['k']} | {method} | {row['time_ms']:.1f} | "
                f"{fmt(row.get('time_vs_graddiff'))} | {target} | {fmt(row.get('peak_mib'), '{:.0f}')} | "
                f"{fmt(row.get('mem_vs_graddiff'))} | "
                + " | ".join(fmt(shares.get(phase), "{:.0%}") for phase in PHASES)
                + f" | {fmt(row.get('profile', {}).get('cast_share'), '{:.0%}')} |"
            )
    failures = [(c["model"], c["k"], m, r["error"]) for c in report["cells"] for m, r in c["methods"].items()
                if "error" in r]  # fmt: skip
    failures += [(c["model"], c.get("k"), "(cell)", c["error"]) for c in report["cells"] if "error" in c]
    if failures:
        lines += ["", "Failures (full tracebacks in the JSON):", ""]
        lines += [f"- {model} k={k} {method}: {error}" for model, k, method, error in failures]
    return "\n".join(lines) + "\n"


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main(args) -> dict:
    import torch

    started = time.perf_counter()
    deadline = started + args.budget_s
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device; run with --device cpu --quick.")
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    cuda = args.device == "cuda"
    machine = {
        "device_name": torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_start": load(),
    }
    try:
        import peft
        import transformers

        machine["transformers"], machine["peft"] = transformers.__version__, peft.__version__
    except ImportError:
        pass
    report = {
        "machine": machine,
        "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "memory_measure": (
            "CUDA max_memory_allocated above the step's start"
            if cuda
            else "peak RSS above the step's start (VmHWM via /proc/self/clear_refs)"
        ),
        "kernel_time": "CUDA device time" if cuda else "self CPU time of aten:: ops",
        "targets_time_vs_graddiff_at_k16": TARGETS,
        "cells": [],
    }
    json_path, md_path = args.output_dir / "gpu_suite.json", args.output_dir / "gpu_suite.md"

    def write() -> None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")

    for index, name in enumerate(args.models):
        # each model gets an equal share of what is left, so a slow first model cannot starve the others
        model_deadline = time.perf_counter() + (deadline - time.perf_counter()) / (len(args.models) - index)
        if time.perf_counter() > deadline:
            report["cells"].append({"model": name, "k": None, "error": "skipped: time budget", "methods": {}})
            continue
        print(f"[{time.perf_counter() - started:6.0f} s] building {name}", flush=True)
        try:
            model, batch, shape = prepare(name, args)
            trainers = make_trainers(model, args, args.methods)
        except Exception as err:  # a model that cannot be built is recorded, the other models still run
            report["cells"].append({"model": name, "k": None, **error_record(err), "methods": {}})
            write()
            continue
        forget = batch(args.forget, 1)
        for k in args.k:
            cell = {"model": name, "k": k, "m": args.forget, "shape": shape}
            try:
                cell["methods"] = measure_cell(
                    model, trainers, forget, batch(k, 2), args, args.methods, model_deadline
                )
            except Exception as err:
                cell.update(error_record(err), methods={})
            report["cells"].append(cell)
            write()  # after every cell: an interrupted run keeps what it measured
            for method, row in cell["methods"].items():
                summary = (f"{row['time_ms']:9.1f} ms  {row.get('time_vs_graddiff', float('nan')):5.2f}×"
                           if "time_ms" in row else row.get("error") or row.get("skipped"))  # fmt: skip
                print(f"[{time.perf_counter() - started:6.0f} s] {name:10} k={k:<3} {method:16} {summary}", flush=True)
        del model, trainers
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    machine["load_end"] = load()
    report["wall_s"] = round(time.perf_counter() - started, 1)
    write()
    md_path.write_text(markdown(report))
    print(f"wrote {json_path} and {md_path} in {report['wall_s']} s", flush=True)
    return report


if __name__ == "__main__":
    arguments = make_parser().parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != bench_orthograd.MMAP_THRESHOLD:
        # CPU peak memory: freed large tensors must leave the RSS (see bench_orthograd's docstring).
        os.environ["MALLOC_MMAP_THRESHOLD_"] = bench_orthograd.MMAP_THRESHOLD
        os.execv(sys.executable, [sys.executable, *sys.argv])
    main(arguments)
