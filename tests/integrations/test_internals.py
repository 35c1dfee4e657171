"""The seam `hf_unlearn.integrations`: every private or version-dependent name it relies on exists in the installed
versions, the failure names what disappeared, and no other library module touches such a name."""

import importlib
import inspect
import re
from pathlib import Path

import pytest
import torch
from transformers import Trainer

import hf_unlearn
from hf_unlearn.integrations import accelerate, deepspeed, peft, transformers
from hf_unlearn.integrations import torch as torch_seam


SEAMS = [accelerate, deepspeed, peft, torch_seam, transformers]
PACKAGE = Path(hf_unlearn.__file__).parent


def resolve(owner: str):
    """`a.b.C` → the module `a.b` attribute `C` (or the module `a.b.C` itself)."""
    try:
        return importlib.import_module(owner)
    except ImportError:
        module, _, name = owner.rpartition(".")
        return getattr(importlib.import_module(module), name)


def internal_present(owner: str, attribute: str) -> bool:
    """On the object, or (an instance attribute the owner's code sets) assigned or read in its source."""
    obj = resolve(owner)
    if hasattr(obj, attribute):
        return True
    source = inspect.getsource(obj if inspect.ismodule(obj) else inspect.getmodule(obj))
    return re.search(rf"\.{re.escape(attribute)}\b", source) is not None


@pytest.mark.parametrize("seam", SEAMS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_listed_internal_exists_in_the_installed_version(seam):
    if seam is deepspeed:
        pytest.importorskip("deepspeed")
    missing = [f"{owner}.{attribute}" for owner, attribute in seam.INTERNALS if not internal_present(owner, attribute)]
    assert not missing, (
        f"{missing} disappeared from the installed version ({seam.CHECKED} was checked): update {seam.__name__} "
        "(hf_unlearn/integrations/) to the new API."
    )


def test_a_renamed_trainer_hook_fails_at_import_with_the_seam_named(monkeypatch):
    transformers.require_trainer_hooks()  # the installed transformers has them
    monkeypatch.delattr(Trainer, "_get_output_dir")
    with pytest.raises(ImportError, match=r"Trainer\._get_output_dir.*hf_unlearn/integrations/transformers\.py"):
        transformers.require_trainer_hooks()


def test_a_re_signed_trainer_hook_fails_too(monkeypatch):
    monkeypatch.setattr(Trainer, "_save_checkpoint", lambda self, model: None)
    with pytest.raises(ImportError, match=r"_save_checkpoint\(self, model, trial\)"):
        transformers.require_trainer_hooks()


def test_push_ignore_patterns_are_the_ones_trainer_passes():
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    source = inspect.getsource(Trainer.push_to_hub)
    written = 'ignore_patterns=["_*", f"{PREFIX_CHECKPOINT_DIR}-*"]'  # as transformers 5.24 writes them
    assert written in source, "Trainer.push_to_hub ignores other files now: update TRAINER_PUSH_IGNORE_PATTERNS"
    assert transformers.TRAINER_PUSH_IGNORE_PATTERNS == ["_*", f"{PREFIX_CHECKPOINT_DIR}-*"]


def test_zero3_parameter_without_the_expected_attributes_is_named():
    parameter = torch.nn.Parameter(torch.zeros(2))
    parameter.ds_id = 0  # looks partitioned by ZeRO-3, but lacks what DeepSpeed 0.19.8 sets next to it
    with pytest.raises(RuntimeError, match=r"lacks \['ds_status'.*hf_unlearn/integrations/deepspeed\.py"):
        with deepspeed.whole_parameters([parameter]):
            pass


def test_backward_kwargs_turn_deepspeed_accumulation_scaling_off_only_under_deepspeed():
    from accelerate.utils import DistributedType

    class Fake:
        def __init__(self, kind):
            self.distributed_type = kind

    assert accelerate.backward_kwargs(Fake(DistributedType.DEEPSPEED)) == {"scale_wrt_gas": False}
    assert accelerate.backward_kwargs(Fake(DistributedType.NO)) == {}


def test_swapped_parameters_restores_the_module():
    layer = torch.nn.Linear(2, 2)
    weight = layer.weight
    substitute = torch.ones(2, 2, requires_grad=True)
    with torch_seam.swapped_parameters(layer, {"weight": substitute}):
        assert layer.weight is substitute
    assert layer.weight is weight


def test_batch_norm_types_cover_torchs_batch_norms():
    for layer in (torch.nn.BatchNorm1d(2), torch.nn.BatchNorm2d(2), torch.nn.SyncBatchNorm(2)):
        assert torch_seam.is_batch_norm(layer)
    assert not torch_seam.is_batch_norm(torch.nn.LayerNorm(2)) and not torch_seam.is_batch_norm(
        torch.nn.GroupNorm(1, 2)
    )


# Private names of transformers / accelerate / DeepSpeed / peft / torch, and where they may appear outside the seam:
# the trainer's overrides of private Trainer hooks (asserted by `require_trainer_hooks`) and its `save_model`
# override, whose signature carries Trainer's `_internal_call`.
PRIVATE = re.compile(
    r"_prepare_inputs|_internal_call|current_gradient_accumulation_steps|scale_wrt_gas|_hf_deepspeed_config_weak_ref"
    r"|_attn_implementation|_gradient_checkpointing_func|\bds_id\b|\bds_status\b|ds_active_sub_modules|_BatchNorm"
    r"|\._parameters\b|\blora_variant\b|_save_checkpoint|_get_output_dir"
)
ALLOWED = {
    "trainer.py": {"_save_checkpoint", "_get_output_dir", "_internal_call"},
    "hub/trainer_card.py": {"_save_checkpoint"},  # a docstring naming the hook
    "checkpoints.py": {"_save_checkpoint"},  # a docstring naming the hook
}


def test_no_private_internal_outside_the_seam():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("integrations/"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in PRIVATE.finditer(line):
                if match.group(0) not in ALLOWED.get(relative, set()):
                    offenders.append(f"{relative}:{number}: {match.group(0)}")
    assert not offenders, "private internals outside hf_unlearn/integrations/:\n" + "\n".join(offenders)


def test_seq2seq_shift_is_transformers_convention():
    from hf_unlearn.losses import shift_labels_right

    labels = torch.tensor([[5, 6, -100, -100], [7, -100, 8, 9]])
    expected = torch.tensor([[3, 5, 6, 0], [3, 7, 0, 8]])  # start token first, −100 → pad, last label dropped
    assert torch.equal(shift_labels_right(labels, pad_token_id=0, decoder_start_token_id=3), expected)
