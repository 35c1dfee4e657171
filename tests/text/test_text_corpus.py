"""The embedded fictitious-people corpus: deterministic, cached by content, splits that do not overlap."""

import pytest

from hf_unlearn.data.text_corpus import TextCorpusConfig, build_text_corpus, generate_people, generate_real_authors


def test_corpus_is_deterministic_across_cache_dirs(tmp_path):
    first = build_text_corpus(TextCorpusConfig.tiny(), cache_dir=tmp_path / "a")
    second = build_text_corpus(TextCorpusConfig.tiny(), cache_dir=tmp_path / "b")
    for split in first:
        assert first[split].to_list() == second[split].to_list()
    other_seed = build_text_corpus(TextCorpusConfig.tiny(seed=1), cache_dir=tmp_path / "a")
    assert other_seed["forget"].to_list() != first["forget"].to_list()
    assert len(list((tmp_path / "a" / "text_corpus").iterdir())) == 2  # one entry per config


def test_default_corpus_shape_and_disjoint_people(tmp_path):
    config = TextCorpusConfig()
    assert config.num_people >= 40
    corpus = build_text_corpus(config, cache_dir=tmp_path)
    people = {split: set(corpus[split]["person_id"]) for split in ("forget", "retain", "holdout")}
    assert len(people["forget"]) == config.forget_people and len(people["holdout"]) == config.holdout_people
    assert not (people["forget"] & people["retain"]) and not (
        people["holdout"] & (people["forget"] | people["retain"])
    )
    for row in corpus["forget"]:
        assert len(row["perturbed_answer"]) >= 3
        assert row["paraphrased_answer"] not in row["perturbed_answer"]
        assert len(set(row["perturbed_answer"])) == len(row["perturbed_answer"])
    names = [person["name"] for person in generate_people(config)]
    assert len(set(names)) == len(names)


def test_config_refuses_forgetting_everyone():
    with pytest.raises(ValueError, match="forget_people"):
        TextCorpusConfig(num_people=4, forget_people=4)


def test_real_authors_are_people_outside_the_forget_domain(tmp_path):
    config = TextCorpusConfig()
    corpus = build_text_corpus(config, cache_dir=tmp_path)
    authors = generate_real_authors(config)
    assert len(corpus["real_authors"]) == config.num_real_authors == len(authors)
    people_words = {word for person in generate_people(config) for word in person["name"].split()}
    people_books = {person["facts"]["book"] for person in generate_people(config)}
    author_words = {word for author in authors for word in author["name"].split()}
    assert not people_words & author_words  # no author shares a name with a fictitious person
    assert not people_books & {author["book"] for author in authors}
    for row in corpus["real_authors"]:
        assert row["perturbed_answer"] and row["paraphrased_answer"] not in row["perturbed_answer"]
    with pytest.raises(ValueError, match="num_real_authors"):
        TextCorpusConfig(num_real_authors=2, num_perturbed=3)
