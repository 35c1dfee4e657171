"""How a reader loads an unlearned model: the card's pipeline tag and its "How to use" snippet.

The snippet is plain transformers + peft (no hf-unlearn needed to *use* the result), and a test runs it against a
saved run, so what the card tells a user is known to work.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """A model family's Hub pipeline tag and the Auto classes that load it."""

    pipeline_tag: str
    model_class: str
    processor_class: str
    pipeline_kwargs: str  # the processor pieces `pipeline(...)` needs for this task


# By the suffix of the base model's class name (`WhisperForConditionalGeneration`, `LlamaForCausalLM`, ...).
TASKS = {
    "ForConditionalGeneration": Task(
        "automatic-speech-recognition",
        "AutoModelForSpeechSeq2Seq",
        "AutoProcessor",
        "tokenizer=processor.tokenizer, feature_extractor=processor.feature_extractor",
    ),
    "ForCausalLM": Task("text-generation", "AutoModelForCausalLM", "AutoTokenizer", "tokenizer=processor"),
    "LMHeadModel": Task("text-generation", "AutoModelForCausalLM", "AutoTokenizer", "tokenizer=processor"),
    "ForImageClassification": Task(
        "image-classification", "AutoModelForImageClassification", "AutoImageProcessor", "image_processor=processor"
    ),
    "ForAudioClassification": Task(
        "audio-classification",
        "AutoModelForAudioClassification",
        "AutoFeatureExtractor",
        "feature_extractor=processor",
    ),
    "ForSequenceClassification": Task(
        "text-classification", "AutoModelForSequenceClassification", "AutoTokenizer", "tokenizer=processor"
    ),
}


def task_of(model_class_name: str) -> Task | None:
    """The `Task` of a model class, or `None` for a family the card cannot describe."""
    for suffix, task in TASKS.items():
        if model_class_name.endswith(suffix):
            return task
    return None


def usage_snippet(task: Task, *, base_model: str, repo: str, is_peft: bool) -> str:
    """Python that loads the unlearned model from `repo` (Hub id or folder) and builds its pipeline.

    With an adapter, the base weights come from `base_model` and the adapter is merged in, so the pipeline runs at
    the base model's speed; a full fine-tune loads from `repo` alone.
    """
    imports = [f"from transformers import {task.model_class}, {task.processor_class}, pipeline"]
    if is_peft:
        imports.insert(0, "from peft import PeftModel")
        load = [
            f'base = {task.model_class}.from_pretrained("{base_model}")',
            f'model = PeftModel.from_pretrained(base, "{repo}").merge_and_unload()',
        ]
    else:
        load = [f'model = {task.model_class}.from_pretrained("{repo}")']
    lines = [
        *imports,
        "",
        *load,
        f'processor = {task.processor_class}.from_pretrained("{repo}")',
        f'pipe = pipeline("{task.pipeline_tag}", model=model, {task.pipeline_kwargs})',
    ]
    return "\n".join(lines)
