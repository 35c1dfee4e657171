"""Where the exact LUR step spends its time, phase by phase, next to a GradDiff step (issue #21, item 3).

    python benchmarks/profile_lur.py                    # base-shaped Whisper, as bench_lur.py: a few minutes on CPU
    python benchmarks/profile_lur.py --configs tiny     # seconds

The exact step is split into the passes it consists of, each timed on its own (interleaved with GradDiff's, median
after warm-up), then one step runs under `torch.profiler` to attribute every `aten::` op's self time to its pass:

    F_f      forward of the forget batch at θ, SDPA math backend (the graph that is differentiated twice)
    B_f      ∇L_u(θ) with create_graph=True
    F_r      forward of the retain batch at θ' = θ − β·∇L_u(θ)
    B_r      v = ∇L_r(θ')
    HVP      ∇²L_u(θ)·v, reverse over reverse through B_f's graph
    (NPO)    the reference forward with the adapter disabled, no gradient (`--forget-loss npo`, LUR's default)

`--with-jvp` also times the step with the HVP by forward over reverse (`torch.func.jvp` of `torch.func.grad` of L_u,
tangent v on the adapter only), B_f then without create_graph.

The trainer runs B_r and the HVP in one backward of its surrogate; they are separate here only to be timed. The
GradDiff step is F_f + F_r + one backward of both. Same model, batches and settings as `bench_lur.py` (its `build`).
Writes `results/profile_lur_<config>.json` and prints a table. Not a test: nothing is asserted.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_lur  # noqa: E402


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["base"], choices=["tiny", "base"])
    parser.add_argument("--forget-loss", default="npo", choices=["npo", "ga"])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--with-jvp", action="store_true", help="also time the HVP by forward over reverse")
    parser.add_argument("--top", type=int, default=8, help="ops listed per pass")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).parent / "results")
    return parser


def passes(model, forget, retain, forget_loss: str, inner_lr: float, with_jvp: bool = False):
    """The GradDiff step and the exact LUR step as lists of (pass name, thunk), run in order."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from hf_unlearn.losses import model_per_example_loss, model_sequence_log_prob, npo_per_example_loss
    from hf_unlearn.methods.lur.meta import batch_loss_fn, trainable_parameters

    params = trainable_parameters(model)
    names, tensors = list(params), list(params.values())
    state = {}

    def graddiff():
        def forget_forward():
            state["f"] = -model_per_example_loss(model, forget).mean()

        def retain_forward():
            state["r"] = model_per_example_loss(model, retain).mean()

        def backward():
            (state.pop("f") + state.pop("r")).backward()

        return [("F_f", forget_forward), ("F_r", retain_forward), ("B_f+B_r", backward)]

    config = model.config
    prefix = []
    if forget_loss == "npo":

        def reference():
            with torch.no_grad(), model.disable_adapter():
                state["ref"] = model_sequence_log_prob(model, forget, config)[0]

        def loss(module, inputs):
            log_prob = model_sequence_log_prob(module, inputs, config)[0]
            return npo_per_example_loss(log_prob, state["ref"], 0.1).mean()

        prefix.append(("NPO reference", reference))
        unlearn = batch_loss_fn(model, forget, loss=loss, config=config)
    else:
        forget_fn = batch_loss_fn(model, forget)
        unlearn = lambda p: -forget_fn(p)  # noqa: E731
    retain_fn = batch_loss_fn(model, retain)

    def exact():
        def forget_forward():
            with sdpa_kernel([SDPBackend.MATH]):
                state["lu"] = unlearn(None)

        def inner_gradient():
            state["g"] = torch.autograd.grad(state.pop("lu"), tensors, create_graph=True)

        def retain_forward():
            points = zip(names, tensors, state["g"], strict=True)
            virtual = {n: (p - inner_lr * g).detach().requires_grad_() for n, p, g in points}
            state["virtual"] = list(virtual.values())
            state["lr"] = retain_fn(virtual)

        def retain_backward():
            state["v"] = torch.autograd.grad(state.pop("lr"), state.pop("virtual"))

        def hvp():
            torch.autograd.grad(state.pop("g"), tensors, state.pop("v"))

        return prefix + [("F_f", forget_forward), ("B_f", inner_gradient), ("F_r", retain_forward),
                        ("B_r", retain_backward), ("HVP", hvp)]  # fmt: skip

    def exact_by_jvp():
        # the same step with the HVP by forward over reverse: torch.func.jvp of torch.func.grad of L_u along v
        from torch.func import grad, jvp

        plain = exact()
        by_label = dict(plain)

        def forget_forward():
            state["lu"] = unlearn(None)

        def inner_gradient():
            state["g"] = torch.autograd.grad(state.pop("lu"), tensors)

        def hvp():
            primals = {n: p.detach() for n, p in zip(names, tensors, strict=True)}
            tangents = dict(zip(names, state.pop("v"), strict=True))
            state.pop("g")
            with sdpa_kernel([SDPBackend.MATH]):
                jvp(grad(unlearn), (primals,), (tangents,))

        replaced = {"F_f": forget_forward, "B_f": inner_gradient, "HVP": hvp}
        return [(label, replaced.get(label, by_label[label])) for label, _ in plain]

    methods = {"graddiff": graddiff(), "lur_exact": exact()}
    if with_jvp:
        methods["lur_exact_jvp"] = exact_by_jvp()
    return methods


def profile_config(name: str, args) -> dict:
    from torch.profiler import ProfilerActivity, profile, record_function

    model, forget, retain, sizes = bench_lur.build(name, args, "cpu")
    steps = passes(model, forget, retain, args.forget_loss, args.inner_lr, args.with_jvp)
    times = {method: {label: [] for label, _ in thunks} for method, thunks in steps.items()}
    for repetition in range(args.warmup + args.repeats):
        for method, thunks in steps.items():
            model.zero_grad(set_to_none=True)
            for label, thunk in thunks:
                start = time.perf_counter()
                thunk()
                if repetition >= args.warmup:
                    times[method][label].append(time.perf_counter() - start)
    medians = {
        method: {label: statistics.median(values) for label, values in labels.items()}
        for method, labels in times.items()
    }
    totals = {
        method: statistics.median(map(sum, zip(*labels.values(), strict=True))) for method, labels in times.items()
    }

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for label, thunk in steps["lur_exact"]:
            with record_function(f"pass/{label}"):
                thunk()
    ops: dict[str, dict[str, float]] = {}
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("pass/"):
            parent = parent.cpu_parent
        label = parent.name.removeprefix("pass/") if parent is not None else "(engine thread)"
        per_pass = ops.setdefault(label, {})
        per_pass[event.name] = per_pass.get(event.name, 0.0) + event.self_cpu_time_total / 1e6
    profiled = {
        label: {"self_cpu_s": sum(by_op.values()),
                "top_ops": sorted(([op, round(s, 3)] for op, s in by_op.items()), key=lambda row: -row[1])[: args.top]}
        for label, by_op in ops.items()
    }  # fmt: skip
    return {
        "config": name,
        **sizes,
        "forget_loss": args.forget_loss,
        "graddiff_s": totals["graddiff"],
        "lur_exact_s": totals["lur_exact"],
        "ratio": totals["lur_exact"] / totals["graddiff"],
        "ratios": {method: total / totals["graddiff"] for method, total in totals.items()},
        "passes_s": medians,
        "profiled_passes": profiled,
    }


def main(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.frames, args.batch, args.label_tokens, args.lora_r, args.dtype = 400, 4, 32, 8, "fp32"
    args.inner_lr = 1e-2
    load_start = os.getloadavg()
    rows = [profile_config(name, args) for name in args.configs]
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "frames": args.frames,
              "batch": args.batch, "label_tokens": args.label_tokens, "load_start": load_start,
              "load_end": os.getloadavg(), "results": rows}  # fmt: skip
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for row in rows:
        path = args.output_dir / f"profile_lur_{row['config']}_{args.forget_loss}.json"
        path.write_text(json.dumps({**report, "results": [row]}, indent=2) + "\n")
        print(f"\n{row['config']} ({args.forget_loss}): GradDiff {row['graddiff_s']:.2f} s, exact LUR "
              f"{row['lur_exact_s']:.2f} s = {row['ratio']:.2f}×; load {load_start[0]:.1f} → {os.getloadavg()[0]:.1f}")  # fmt: skip
        for method, labels in row["passes_s"].items():
            print(f"  {method:10} " + "  ".join(f"{label} {seconds:.2f}" for label, seconds in labels.items()))
        for label, entry in row["profiled_passes"].items():
            ops = ", ".join(f"{op.removeprefix('aten::')} {s:.2f}" for op, s in entry["top_ops"])
            print(f"  profiled {label:16} {entry['self_cpu_s']:6.2f} s: {ops}")
        print(f"wrote {path}")


if __name__ == "__main__":
    main(make_parser().parse_args())
