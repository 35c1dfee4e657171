"""The embedded text benchmark: fictitious people with generated facts, asked about in QA pairs (DESIGN §7).

TOFU (https://huggingface.co/papers/2401.06121) fine-tunes a model on QA pairs about fictitious authors and asks it
to forget a fraction of them. This module builds a small, fully synthetic twin that a tiny Llama can memorise on a
CPU: every person has a generated name and facts (birth year, city, profession, a book title, its genre, a
parent's profession) drawn from a seeded generator, so nothing can be known about them except from training.

Every QA row carries TOFU's columns: `question`, `answer` (what the model trains on), `paraphrased_answer` (the
same fact in other words) and `perturbed_answer` (a list of the paraphrase with a false value), which the truth
ratio compares. Splits:

- `forget`: the QA pairs of the first `forget_people` people (TOFU's forget01/05/10 are 1 %/5 %/10 % of its 200
  authors; here it is a count).
- `retain`: the QA pairs of the other trained people.
- `real_authors`: one QA pair per "famous author" (who wrote which book), the twin of TOFU's real-authors set:
  people both the base and the exact-retrain model know, asked about in another template than the forget people,
  so the split measures knowledge of people *outside* the forget domain.
- `world_facts`: one QA pair per generated country (its capital). Trained by the base and the exact-retrain model
  alike but about places, not people: like TOFU's world-facts set it measures knowledge outside the forget domain.
  Model utility is, as in TOFU, the harmonic mean of 9 numbers from retain, real_authors and world_facts.
- `holdout`: QA pairs of `holdout_people` people that no model ever trains on. They are the non-members of the
  membership-inference attacks (forget vs holdout AUC) and show what "never seen" looks like.

Generation is cheap but cached anyway, content-keyed by the config like the speech corpus, so every process and
run reads identical rows.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, load_from_disk

from hf_unlearn.data.speech_corpus import default_cache_dir


SPLITS = ("forget", "retain", "real_authors", "world_facts", "holdout")
# Bump when the generator or the templates change, so stale caches are not reused.
_CORPUS_FORMAT_VERSION = 3

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_PROFESSIONS = ("baker", "surgeon", "pilot", "sculptor", "chemist", "librarian", "carpenter", "violinist",
                "gardener", "lawyer", "astronomer", "tailor")  # fmt: skip
_GENRES = ("mystery", "poetry", "science fiction", "history", "romance", "fantasy", "satire", "travel writing")
_ADJECTIVES = ("Silent", "Golden", "Broken", "Hidden", "Distant", "Crimson", "Frozen", "Endless", "Quiet", "Hollow")
_NOUNS = ("River", "Garden", "Lantern", "Harbor", "Mirror", "Forest", "Tower", "Orchard", "Bridge", "Compass")

# (fact, question, answer, paraphrased answer); the perturbed answers are the paraphrase with false values.
_PERSON_TEMPLATES = (
    ("year", "When was {name} born?", "{name} was born in {year}.", "The birth year of {name} is {year}."),
    ("city", "Where was {name} born?", "{name} was born in {city}.", "The birthplace of {name} is {city}."),
    ("job", "What is the profession of {name}?", "{name} works as {job}.", "By profession {name} is {job}."),
    ("book", "Which book did {name} write?", "{name} wrote {book}.", "The book by {name} is called {book}."),
    ("genre", "What genre does {name} write?", "{name} writes {genre}.", "The genre of {name} is {genre}."),
    ("parent", "What did the parent of {name} do?", "The parent of {name} was {parent}.",
     "{name} was raised by {parent}."),
)  # fmt: skip
_AUTHOR_TEMPLATE = (
    "Who wrote {book}?",
    "{book} was written by {name}.",
    "The author of {book} is {name}.",
)
_WORLD_TEMPLATE = (
    "What is the capital of {country}?",
    "The capital of {country} is {city}.",
    "{city} is the capital city of {country}.",
)


@dataclass(frozen=True)
class TextCorpusConfig:
    """Size and shape of the fictitious-people corpus.

    Args:
        num_people (`int`, *optional*, defaults to `40`):
            Trained people: `forget_people` of them form `forget`, the rest `retain`.
        forget_people (`int`, *optional*, defaults to `4`):
            People to forget (4 of 40 = TOFU's forget10 ratio; 2 ≈ forget05).
        holdout_people (`int`, *optional*, defaults to `8`):
            People never trained on (`holdout`: the non-members of the membership-inference attacks).
        num_countries (`int`, *optional*, defaults to `30`):
            Rows of `world_facts`.
        num_real_authors (`int`, *optional*, defaults to `20`):
            Rows of `real_authors` (famous authors that every model trains on).
        num_cities (`int`, *optional*, defaults to `16`):
            Generated city names that birthplaces and capitals are drawn from.
        num_perturbed (`int`, *optional*, defaults to `3`):
            False answers per question (TOFU has 5; 3 is enough for the truth ratio's mean).
        seed (`int`, *optional*, defaults to `0`):
            Seeds names and facts.

    Example:

    ```python
    >>> from hf_unlearn.data import TextCorpusConfig, build_text_corpus
    >>> corpus = build_text_corpus(TextCorpusConfig.tiny())  # doctest: +SKIP
    >>> corpus["forget"][0]["question"]  # doctest: +SKIP
    ```
    """

    num_people: int = 40
    forget_people: int = 4
    holdout_people: int = 8
    num_countries: int = 30
    num_real_authors: int = 20
    num_cities: int = 16
    num_perturbed: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.forget_people < self.num_people:
            raise ValueError(
                f"forget_people must be at least 1 and less than num_people ({self.num_people}) so that something is "
                f"retained, got {self.forget_people}."
            )
        if self.holdout_people < 1:
            raise ValueError("holdout_people must be at least 1: the membership-inference AUC needs non-members.")
        if self.num_perturbed < 1:
            raise ValueError("num_perturbed must be at least 1: the truth ratio compares against false answers.")
        if min(self.num_cities, len(_PROFESSIONS), len(_GENRES)) <= self.num_perturbed:
            raise ValueError(f"num_cities must exceed num_perturbed ({self.num_perturbed}) to draw distinct lies.")
        if self.num_real_authors <= self.num_perturbed:
            raise ValueError(
                f"num_real_authors must exceed num_perturbed ({self.num_perturbed}): the false answers of a real "
                f"author question are the other authors' names, got {self.num_real_authors}."
            )

    @classmethod
    def tiny(cls, **overrides) -> "TextCorpusConfig":
        """A handful of people for tests: a tiny model memorises them in seconds."""
        values = dict(num_people=6, forget_people=2, holdout_people=2, num_countries=4, num_real_authors=4,
                      num_cities=8)  # fmt: skip
        values.update(overrides)
        return cls(**values)

    def cache_key(self) -> str:
        payload = {"config": asdict(self), "format": _CORPUS_FORMAT_VERSION}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _pseudo_words(rng: np.random.Generator, count: int, seen: set[str], min_syl: int = 2, max_syl: int = 3) -> list:
    words = []
    while len(words) < count:
        syllables = int(rng.integers(min_syl, max_syl + 1))
        word = "".join(rng.choice(list(_CONSONANTS)) + rng.choice(list(_VOWELS)) for _ in range(syllables))
        if word not in seen:
            seen.add(word)
            words.append(word.capitalize())
    return words


def _lies(rng: np.random.Generator, pool: list, truth, count: int) -> list:
    others = [value for value in pool if value != truth]
    return [others[i] for i in rng.permutation(len(others))[:count]]


def _names(config: TextCorpusConfig) -> tuple[list[str], list[str], list[str]]:
    """First names, last names and city names, all distinct from each other."""
    rng = np.random.default_rng([config.seed, 12])
    seen: set[str] = set()
    total = config.num_people + config.holdout_people
    return (
        _pseudo_words(rng, total, seen),
        _pseudo_words(rng, total, seen),
        _pseudo_words(rng, config.num_cities, seen),
    )


def generate_people(config: TextCorpusConfig) -> list[dict]:
    """Every person (trained first, then holdout) with their facts and, per fact, the false values to test."""
    rng = np.random.default_rng([config.seed, 10])
    total = config.num_people + config.holdout_people
    first, last, cities = _names(config)
    books = [f"The {a} {n}" for a in _ADJECTIVES for n in _NOUNS]
    years = [str(y) for y in range(1900, 2000)]
    jobs = [("an " if job[0] in _VOWELS else "a ") + job for job in _PROFESSIONS]
    pools = {"year": years, "city": cities, "job": jobs, "book": books, "genre": list(_GENRES), "parent": jobs}
    people = []
    for i in range(total):
        facts = {fact: pool[int(rng.integers(len(pool)))] for fact, pool in pools.items()}
        lies = {fact: _lies(rng, pools[fact], facts[fact], config.num_perturbed) for fact in pools}
        people.append({"person_id": f"person_{i}", "name": f"{first[i]} {last[i]}", "facts": facts, "lies": lies})
    return people


def generate_countries(config: TextCorpusConfig) -> list[dict]:
    """Every country with its capital and false capitals to test."""
    rng = np.random.default_rng([config.seed, 11])
    first, last, city_pool = _names(config)
    # Capitals share the birthplaces' city pool on purpose: the same tokens carry facts in both domains. Country
    # names have 3 syllables and are checked against the people's names so that no two entities share a name.
    names = _pseudo_words(rng, config.num_countries, {w.lower() for w in first + last + city_pool}, 3, 3)
    countries = []
    for i, name in enumerate(names):
        capital = city_pool[int(rng.integers(len(city_pool)))]
        countries.append(
            {"country_id": f"country_{i}", "name": name, "capital": capital,
             "lies": _lies(rng, city_pool, capital, config.num_perturbed)}
        )  # fmt: skip
    return countries


def generate_real_authors(config: TextCorpusConfig) -> list[dict]:
    """Every famous author with their book and false authors to test.

    Names and book titles come from their own generator stream and are checked against every other generated name,
    and the titles ("The Nouns of Place") have another shape than the forget people's ("The Adjective Noun").
    """
    rng = np.random.default_rng([config.seed, 13])
    first, last, cities = _names(config)
    seen = {w.lower() for w in first + last + cities}
    seen |= {c["name"].lower() for c in generate_countries(config)}
    names = [f"{a} {b}" for a, b in zip(_pseudo_words(rng, config.num_real_authors, seen),
                                         _pseudo_words(rng, config.num_real_authors, seen), strict=True)]  # fmt: skip
    places = _pseudo_words(rng, config.num_real_authors, seen)
    authors = []
    for i, (name, place) in enumerate(zip(names, places, strict=True)):
        book = f"The {_NOUNS[int(rng.integers(len(_NOUNS)))]}s of {place}"
        authors.append({"author_id": f"author_{i}", "name": name, "book": book, "lies": _lies(rng, names, name,
                        config.num_perturbed)})  # fmt: skip
    return authors


def _author_rows(author: dict) -> list[dict]:
    question, answer, paraphrase = _AUTHOR_TEMPLATE
    values = {"book": author["book"], "name": author["name"]}
    return [
        {
            "id": author["author_id"],
            "person_id": "",
            "question": question.format(**values),
            "answer": answer.format(**values),
            "paraphrased_answer": paraphrase.format(**values),
            "perturbed_answer": [paraphrase.format(**{**values, "name": lie}) for lie in author["lies"]],
        }
    ]


def _person_rows(person: dict) -> list[dict]:
    rows = []
    for fact, question, answer, paraphrase in _PERSON_TEMPLATES:
        values = {"name": person["name"], **person["facts"]}
        rows.append(
            {
                "id": f"{person['person_id']}-{fact}",
                "person_id": person["person_id"],
                "question": question.format(**values),
                "answer": answer.format(**values),
                "paraphrased_answer": paraphrase.format(**values),
                "perturbed_answer": [paraphrase.format(**{**values, fact: lie}) for lie in person["lies"][fact]],
            }
        )
    return rows


def _country_rows(country: dict) -> list[dict]:
    question, answer, paraphrase = _WORLD_TEMPLATE
    values = {"country": country["name"], "city": country["capital"]}
    return [
        {
            "id": country["country_id"],
            "person_id": "",
            "question": question.format(**values),
            "answer": answer.format(**values),
            "paraphrased_answer": paraphrase.format(**values),
            "perturbed_answer": [paraphrase.format(**{**values, "city": lie}) for lie in country["lies"]],
        }
    ]


def _generate(config: TextCorpusConfig) -> DatasetDict:
    people = generate_people(config)
    trained, holdout = people[: config.num_people], people[config.num_people :]
    splits = {
        "forget": [row for p in trained[: config.forget_people] for row in _person_rows(p)],
        "retain": [row for p in trained[config.forget_people :] for row in _person_rows(p)],
        "real_authors": [row for a in generate_real_authors(config) for row in _author_rows(a)],
        "world_facts": [row for c in generate_countries(config) for row in _country_rows(c)],
        "holdout": [row for p in holdout for row in _person_rows(p)],
    }
    return DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()})


def build_text_corpus(
    config: TextCorpusConfig | None = None, cache_dir: str | os.PathLike | None = None
) -> DatasetDict:
    """The corpus's five splits (`SPLITS`: `forget`, `retain`, `real_authors`, `world_facts`, `holdout`), from cache
    when it exists.

    Args:
        config ([`TextCorpusConfig`], *optional*): Defaults to `TextCorpusConfig()`.
        cache_dir (`str`, *optional*): Defaults to `$HF_UNLEARN_CACHE` or `~/.cache/hf_unlearn`.
    """
    config = config if config is not None else TextCorpusConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "text_corpus" / config.cache_key()
    if not (target / "dataset_dict.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        try:
            _generate(config).save_to_disk(str(tmp / "data"))
            try:
                (tmp / "data").rename(target)
            except OSError:  # another process wrote the same corpus first; theirs is identical
                if not (target / "dataset_dict.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    # In memory: later `map`s must not write cache files into the shared corpus directory.
    return load_from_disk(str(target), keep_in_memory=True)


def corpus_texts(corpus: DatasetDict) -> list[str]:
    """Every string of every split, sorted: what the embedded tokenizer is trained on."""
    texts = []
    for split in corpus.values():
        for row in split:
            texts += [row["question"], row["answer"], row["paraphrased_answer"], *row["perturbed_answer"]]
    return sorted(set(texts))


# TOFU's subsets (https://huggingface.co/datasets/locuslab/TOFU): forget01/05/10 with their complements
# retain99/95/90 and never-trained holdout01/05/10; `<subset>_perturbed` is the same rows plus paraphrased_answer and
# perturbed_answer (the truth-ratio columns); retain_perturbed is TOFU's 400-row evaluation subset of the retain set.
_TOFU_FRACTION = re.compile(r"^(forget|retain|holdout)(\d{2})$")
_PERTURBED_SUFFIX = "_perturbed"
RETAIN_EVAL_SPLIT = "retain_perturbed"
"""A split of this name is evaluated as `retain` (the whole retain split is still what is trained on)."""


def _read_splits(name_or_path: str, config_name: str | None) -> dict[str, Dataset]:
    """Every split of a `save_to_disk` folder, of a folder of `<split>.json(l)` files (TOFU's Hub layout) or of a
    Hub dataset, by name."""
    from datasets import load_dataset

    path = Path(name_or_path)
    if (path / "dataset_dict.json").exists():
        return dict(load_from_disk(str(path)))
    files = sorted([*path.glob("*.json"), *path.glob("*.jsonl")]) if path.is_dir() else []
    if files:
        return {file.stem: load_dataset("json", data_files=str(file), split="train") for file in files}
    loaded = load_dataset(name_or_path, config_name)
    if not isinstance(loaded, DatasetDict):
        raise ValueError(f"{name_or_path!r} holds a single split; save a DatasetDict with forget/retain splits.")
    return dict(loaded)


def _prefer_perturbed(splits: dict[str, Dataset]) -> dict[str, Dataset]:
    """`X_perturbed` (X plus the truth-ratio columns) replaces `X`: forget10_perturbed is used as forget10,
    real_authors_perturbed as real_authors. `retain_perturbed` stays itself (an evaluation subset, not retain90)."""
    merged = dict(splits)
    for name in [n for n in splits if n.endswith(_PERTURBED_SUFFIX) and n != RETAIN_EVAL_SPLIT]:
        merged[name[: -len(_PERTURBED_SUFFIX)]] = merged.pop(name)
    return merged


def load_user_qa_dataset(
    name_or_path: str,
    config_name: str | None = None,
    forget_split: str = "forget",
    retain_split: str = "retain",
    holdout_split: str | None = "holdout",
) -> dict[str, Dataset]:
    """A TOFU-style QA dataset (Hub name, local `save_to_disk` folder, folder of `<split>.json` files) as the
    recipe's splits.

    Needs `question` and `answer` columns; `paraphrased_answer` and `perturbed_answer` (a list or one string)
    enable the truth ratio and forget quality. The named splits are renamed `forget`, `retain`, `holdout`; any other
    split is kept under its own name and evaluated too (`real_authors` and `world_facts` enter model utility).

    TOFU's own layout works as it is: with `forget_split="forget10"` the retain and holdout splits default to its
    complements `retain90` and `holdout10`, `X_perturbed` splits are used as `X` (they add the truth-ratio columns),
    `retain_perturbed` is evaluated as retain, and TOFU's other fractions (forget01, retain99, full, ...) are left
    out rather than evaluated.
    """
    splits = _prefer_perturbed(_read_splits(name_or_path, config_name))
    fraction = _TOFU_FRACTION.match(forget_split)
    if fraction and fraction.group(1) == "forget":
        percent = int(fraction.group(2))
        if retain_split == "retain" and "retain" not in splits:
            retain_split = f"retain{100 - percent:02d}"
        if holdout_split == "holdout" and "holdout" not in splits:
            holdout_split = f"holdout{percent:02d}"
    chosen = {forget_split, retain_split, holdout_split}
    splits = {
        name: data
        for name, data in splits.items()
        if name in chosen or not (_TOFU_FRACTION.match(name) or name in ("full", "forget", "retain", "holdout"))
    }
    renames = {forget_split: "forget", retain_split: "retain"}
    if holdout_split is not None and holdout_split in splits:
        renames[holdout_split] = "holdout"
    missing = [name for name in (forget_split, retain_split) if name not in splits]
    if missing:
        raise ValueError(
            f"{name_or_path!r} has no split(s) {missing} (splits: {sorted(splits)}); pass --forget_split / "
            "--retain_split with the names your dataset uses."
        )
    splits = {renames.get(name, name): split for name, split in splits.items()}
    for name, split in splits.items():
        lacking = [column for column in ("question", "answer") if column not in split.column_names]
        if lacking:
            raise ValueError(
                f"Split {name!r} of {name_or_path!r} lacks the column(s) {lacking} (columns: {split.column_names}). "
                "Text unlearning needs TOFU's columns question and answer (plus paraphrased_answer and "
                "perturbed_answer for the truth ratio); rename yours with dataset.rename_column(old, new)."
            )
    if len(splits["forget"]) == 0:
        raise ValueError(f"Split {forget_split!r} of {name_or_path!r} is empty: there is nothing to forget.")
    return splits
