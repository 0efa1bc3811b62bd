"""Specification of the hybrid batch schedule (X-X-mono vs X-Y batches, one source per batch)."""
import collections
import dataclasses
import hashlib
import itertools
import logging

import numpy as np
import pytest

from hybridir.data import corpora
from hybridir.data import hybrid
from hybridir import errors

STEPS = 10_000
BATCH_SIZE = 32


def make_sampler(corpus, batch_size, **settings) -> hybrid.HybridSampler:
  """The sampler of `corpus` drawing by the schedule of `batch_size` and `settings`."""
  return hybrid.HybridSampler(corpus, hybrid.HybridSchedule(batch_size, **settings))


@pytest.fixture(scope="module")
def xquad_corpus(data_dir):
  return corpora.load_parallel_corpus(data_dir / "xquad-r")


@pytest.fixture(scope="module")
def mlqa_corpus(data_dir):
  return corpora.load_parallel_corpus(data_dir / "mlqa-r")


@pytest.fixture(scope="module")
def xquad_stream(xquad_corpus):
  """10,000 default batches (alpha 0.5, uniform languages) over XQuAD-R's 11 languages."""
  sampler = make_sampler(xquad_corpus, BATCH_SIZE, alpha=0.5, seed=0)
  return [sampler.batch(step) for step in range(STEPS)]


@pytest.fixture(scope="module")
def xquad_per_batch_stream(xquad_corpus):
  """10,000 batches whose X-Y batches hold one language pair each (not the paper's X-Y)."""
  sampler = make_sampler(xquad_corpus, BATCH_SIZE, alpha=0.5, cross_pairs="per_batch",
                                 seed=0)
  return [sampler.batch(step) for step in range(STEPS)]


@pytest.fixture(scope="module")
def mlqa_size_stream(mlqa_corpus):
  """10,000 batches over partly parallel MLQA-R, languages drawn by number of pairs."""
  sampler = make_sampler(mlqa_corpus, BATCH_SIZE, alpha=0.5, language_sampling="size",
                                 seed=1)
  return [sampler.batch(step) for step in range(STEPS)]


def shares(counter):
  total = sum(counter.values())
  return {key: count / total for key, count in counter.items()}


def total_variation(observed, expected):
  return 0.5 * sum(abs(observed.get(key, 0) - p) for key, p in expected.items())


def shared_ids(corpus, x, y):
  return set(corpus.pairs[x]) & set(corpus.pairs[y])


@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.8])
def test_mono_share_is_within_two_points_of_alpha(xquad_corpus, alpha):
  sampler = make_sampler(xquad_corpus, BATCH_SIZE, alpha=alpha, seed=2)
  kinds = [sampler.batch(step).kind for step in range(STEPS)]
  assert abs(kinds.count("mono") / STEPS - alpha) <= 0.02


def test_default_mono_batch_has_one_language(xquad_stream):
  for spec in (s for s in xquad_stream if s.kind == "mono"):
    assert set(spec.query_languages) == set(spec.passage_languages) == {spec.query_language}
    assert spec.passage_language == spec.query_language


def test_default_cross_batch_pairs_each_query_with_a_passage_in_another_language(xquad_stream):
  for spec in (s for s in xquad_stream if s.kind == "cross"):
    assert spec.query_language == spec.passage_language == "mixed"
    assert all(x != y for x, y in zip(spec.query_languages, spec.passage_languages))


def test_cross_lingual_batch_mixes_language_pairs(xquad_corpus):
  """The paper's X-Y at batch 16 over 7 languages: several pairs, so a query's negatives include
  passages in its own language."""
  seven = ("ar", "de", "en", "es", "hi", "ru", "zh")
  corpus = corpora.ParallelCorpus(seven, {lang: xquad_corpus.pairs[lang] for lang in seven})
  sampler = make_sampler(corpus, 16, alpha=0.0, seed=7)
  specs = [sampler.batch(step) for step in range(2000)]
  pairs = [len(set(zip(s.query_languages, s.passage_languages))) for s in specs]
  assert np.mean([n >= 2 for n in pairs]) >= 0.999 and np.mean(pairs) > 10
  own_language_negative = [x in s.passage_languages for s in specs for x in s.query_languages]
  assert np.mean(own_language_negative) > 0.9


def test_per_example_cross_pairs_are_uniform_over_ordered_pairs(xquad_stream):
  observed = shares(collections.Counter(
      pair for s in xquad_stream if s.kind == "cross"
      for pair in zip(s.query_languages, s.passage_languages)))
  assert len(observed) == 110
  assert total_variation(observed, {pair: 1 / 110 for pair in observed}) < 0.02


def test_per_batch_cross_batch_has_one_language_pair_of_different_languages(
    xquad_per_batch_stream):
  for spec in (s for s in xquad_per_batch_stream if s.kind == "cross"):
    assert set(spec.query_languages) == {spec.query_language}
    assert set(spec.passage_languages) == {spec.passage_language}
    assert spec.query_language != spec.passage_language


def test_default_batch_never_repeats_a_pair_id(xquad_stream, mlqa_size_stream):
  for spec in xquad_stream + mlqa_size_stream:
    assert len(set(spec.pair_ids)) == BATCH_SIZE


def test_uniform_sampling_gives_every_language_an_equal_share(mlqa_corpus):
  sampler = make_sampler(mlqa_corpus, BATCH_SIZE, alpha=1.0, seed=3)
  observed = shares(collections.Counter(sampler.batch(s).query_language for s in range(STEPS)))
  assert total_variation(observed, {lang: 1 / 7 for lang in mlqa_corpus.languages}) < 0.03


def test_size_sampling_gives_languages_shares_proportional_to_their_pairs(mlqa_corpus,
                                                                          mlqa_size_stream):
  sizes = {lang: len(mlqa_corpus.pairs[lang]) for lang in mlqa_corpus.languages}
  expected = {lang: n / sum(sizes.values()) for lang, n in sizes.items()}
  observed = shares(collections.Counter(
      s.query_language for s in mlqa_size_stream if s.kind == "mono"))
  assert total_variation(observed, expected) < 0.03
  assert observed["en"] > 0.25  # English holds 1148 of 4199 (id, language) pairs; uniform: 1/7.


def test_uniform_sampling_gives_every_per_batch_cross_pair_an_equal_share(xquad_per_batch_stream):
  observed = shares(collections.Counter(
      (s.query_language, s.passage_language) for s in xquad_per_batch_stream if s.kind == "cross"))
  assert len(observed) == 110
  assert total_variation(observed, {pair: 1 / 110 for pair in observed}) < 0.1


def test_size_sampling_gives_cross_pairs_shares_proportional_to_shared_ids(mlqa_corpus,
                                                                           mlqa_size_stream):
  sizes = {(x, y): len(shared_ids(mlqa_corpus, x, y))
           for x, y in itertools.permutations(mlqa_corpus.languages, 2)}
  expected = {pair: n / sum(sizes.values()) for pair, n in sizes.items()}
  observed = shares(collections.Counter(
      pair for s in mlqa_size_stream if s.kind == "cross"
      for pair in zip(s.query_languages, s.passage_languages)))
  assert total_variation(observed, expected) < 0.05
  assert total_variation(expected, {pair: 1 / 42 for pair in sizes}) > 0.15  # Not uniform.


def test_batch_uses_only_pair_ids_present_in_its_languages(mlqa_corpus, mlqa_size_stream):
  for spec in mlqa_size_stream:
    for pair_id, x, y in zip(spec.pair_ids, spec.query_languages, spec.passage_languages):
      assert pair_id in mlqa_corpus.pairs[x] and pair_id in mlqa_corpus.pairs[y]


def test_mixed_mono_batches_use_only_pair_ids_present_in_each_example_language(mlqa_corpus):
  sampler = make_sampler(mlqa_corpus, BATCH_SIZE, mono_mixed_languages=True, seed=4)
  for spec in (sampler.batch(step) for step in range(1000)):
    for pair_id, x, y in zip(spec.pair_ids, spec.query_languages, spec.passage_languages):
      assert pair_id in mlqa_corpus.pairs[x] and pair_id in mlqa_corpus.pairs[y]


def test_by_size_alpha_is_rejected_saying_what_replaced_it():
  with pytest.raises(errors.SettingError, match="alpha='by_size' was removed: .* by size"):
    hybrid.HybridSchedule(BATCH_SIZE, alpha="by_size")


@pytest.mark.parametrize("settings,message", [
    (dict(batch_size=0), r"HybridSchedule.batch_size must be a positive integer, found 0"),
    (dict(batch_size=2.5), r"HybridSchedule.batch_size must be a positive integer, found 2.5"),
    (dict(alpha=1.5), r"HybridSchedule.alpha must be in \[0, 1\].*found 1.5"),
    (dict(alpha=None), r"HybridSchedule.alpha must be in \[0, 1\].*found None"),
    (dict(cross_pairs="pairs"), r"HybridSchedule.cross_pairs must be one of .*found 'pairs'"),
    (dict(language_sampling="x"), r"HybridSchedule.language_sampling must be one of"),
    (dict(language_temperature=0), r"HybridSchedule.language_temperature must be positive"),
    (dict(source_temperature=-1.0), r"HybridSchedule.source_temperature must be positive"),
    (dict(seed=-1), r"HybridSchedule.seed must be a non-negative integer, found -1"),
    (dict(mono_mixed_languages="yes"), r"HybridSchedule.mono_mixed_languages must be True or"),
])
def test_a_bad_schedule_fails_once_when_made_naming_the_parameter(settings, message):
  with pytest.raises(errors.SettingError, match=message):
    hybrid.HybridSchedule(**{"batch_size": BATCH_SIZE, **settings})


def test_the_sampler_takes_the_schedules_values_unchecked_again(xquad_corpus):
  schedule = hybrid.HybridSchedule(8, alpha=1, seed=np.int64(3))
  assert (schedule.alpha, schedule.seed) == (1.0, 3) and type(schedule.seed) is int
  assert hybrid.HybridSampler(xquad_corpus, schedule).schedule is schedule
  with pytest.raises(errors.SettingError, match="schedule must be a hybrid.HybridSchedule"):
    hybrid.HybridSampler(xquad_corpus, 8)


def with_sources(corpus, source_of):
  """The corpus with each pair's source replaced by source_of(pair)."""
  return corpora.ParallelCorpus(corpus.languages, {
      lang: {i: dataclasses.replace(pair, source=source_of(pair)) for i, pair in pairs.items()}
      for lang, pairs in corpus.pairs.items()})


@pytest.fixture(scope="module")
def two_sources(xquad_corpus):
  """XQuAD-R as two source datasets: articles of the first 36 titles ("big") and the rest."""
  titles = sorted(xquad_corpus.article_ids())[:36]
  return with_sources(xquad_corpus, lambda pair: "big" if pair.article_id in titles else "small")


def test_each_batch_comes_from_one_source_drawn_by_its_size(two_sources):
  sizes = {name: len(ids) for name, ids in two_sources.sources().items()}
  sampler = make_sampler(two_sources, BATCH_SIZE, seed=8)
  specs = [sampler.batch(step) for step in range(STEPS)]
  for spec in specs:
    assert all(two_sources.pairs["en"][i].source == spec.source for i in spec.pair_ids)
  observed = shares(collections.Counter(s.source for s in specs))
  expected = {name: n / sum(sizes.values()) for name, n in sizes.items()}
  assert total_variation(observed, expected) < 0.02 and observed["big"] > 0.65


def test_source_temperature_flattens_source_shares(two_sources):
  sampler = make_sampler(two_sources, BATCH_SIZE, source_temperature=100.0, seed=8)
  observed = shares(collections.Counter(sampler.batch(step).source for step in range(STEPS)))
  assert total_variation(observed, {"big": 0.5, "small": 0.5}) < 0.03


def test_source_is_drawn_independently_of_the_batch_kind(two_sources):
  sampler = make_sampler(two_sources, BATCH_SIZE, alpha=0.3, seed=9)
  specs = [sampler.batch(step) for step in range(STEPS)]
  for source in ("big", "small"):
    kinds = [s.kind for s in specs if s.source == source]
    assert abs(kinds.count("mono") / len(kinds) - 0.3) < 0.04


def test_a_one_language_source_makes_only_mono_batches(xquad_corpus, caplog):
  english_only = set(sorted(xquad_corpus.pairs["en"])[:400])
  corpus = with_sources(xquad_corpus, lambda pair: "en_only" if pair.pair_id in english_only
                        else "parallel")
  corpus = corpora.ParallelCorpus(corpus.languages, {
      lang: {i: p for i, p in pairs.items() if lang == "en" or i not in english_only}
      for lang, pairs in corpus.pairs.items()})
  with caplog.at_level(logging.WARNING):
    sampler = make_sampler(corpus, BATCH_SIZE, seed=10)
  assert "['en_only'] make no cross batch" in caplog.text
  specs = [sampler.batch(step) for step in range(2000)]
  assert {s.source for s in specs if s.kind == "cross"} == {"parallel"}
  assert {s.source for s in specs if s.kind == "mono"} == {"parallel", "en_only"}
  assert {s.query_language for s in specs if s.source == "en_only"} == {"en"}


def test_mixed_mono_batch_pairs_each_query_with_a_passage_in_its_own_language(xquad_corpus):
  sampler = make_sampler(xquad_corpus, BATCH_SIZE, alpha=1.0, mono_mixed_languages=True)
  spec = sampler.batch(0)
  assert spec.query_language == spec.passage_language == "mixed"
  assert spec.query_languages == spec.passage_languages
  assert len(set(spec.query_languages)) > 1 and len(set(spec.pair_ids)) == BATCH_SIZE


def test_cross_batch_never_repeats_a_pair_id(xquad_stream):
  for spec in (s for s in xquad_stream if s.kind == "cross"):
    assert len(set(spec.pair_ids)) == BATCH_SIZE


def test_parallel_duplicates_appear_only_when_allowed(xquad_corpus):
  def repeats(allow):
    sampler = make_sampler(xquad_corpus, 512, alpha=1.0, mono_mixed_languages=True,
                                   allow_parallel_duplicates=allow, seed=5)
    return sum(512 - len(set(sampler.batch(step).pair_ids)) for step in range(20))
  assert repeats(allow=False) == 0 and repeats(allow=True) > 0


def test_two_hosts_draw_the_same_kind_and_languages(xquad_corpus):
  sampler = make_sampler(xquad_corpus, BATCH_SIZE, seed=6)
  for step in range(500):
    first, second = (sampler.batch(step, host, 2) for host in (0, 1))
    assert (first.kind, first.query_language, first.passage_language) == (
        second.kind, second.query_language, second.passage_language)


def test_two_hosts_take_disjoint_halves_of_the_single_host_batch(xquad_corpus):
  two_hosts = make_sampler(xquad_corpus, BATCH_SIZE, seed=6)
  one_host = make_sampler(xquad_corpus, BATCH_SIZE, seed=6)
  for step in range(500):
    first, second = (two_hosts.batch(step, host, 2) for host in (0, 1))
    assert len(first.pair_ids) == len(second.pair_ids) == BATCH_SIZE // 2
    assert not set(first.pair_ids) & set(second.pair_ids)
    assert first.pair_ids + second.pair_ids == one_host.batch(step).pair_ids


def test_restart_at_step_n_gives_the_uninterrupted_stream_from_n(xquad_corpus, xquad_stream):
  restarted = make_sampler(xquad_corpus, BATCH_SIZE, alpha=0.5, seed=0)
  assert [restarted.batch(step) for step in range(7_000, STEPS)] == xquad_stream[7_000:]


def test_another_seed_gives_another_stream(xquad_corpus, xquad_stream):
  other = make_sampler(xquad_corpus, BATCH_SIZE, alpha=0.5, seed=1)
  assert [other.batch(step) for step in range(100)] != xquad_stream[:100]


def test_examples_of_one_language_do_not_repeat_within_an_epoch(xquad_stream):
  steps_per_epoch = 1190 // BATCH_SIZE
  seen = collections.defaultdict(list)
  for spec in xquad_stream:
    if spec.kind == "mono" and spec.query_language == "en":
      seen[spec.step // steps_per_epoch] += spec.pair_ids
  assert all(len(ids) == len(set(ids)) for ids in seen.values())
  assert sum(len(ids) for ids in seen.values()) > 10 * 1190  # Many epochs were checked.


def test_every_pair_id_is_drawn_about_equally_often(xquad_stream):
  counts = collections.Counter(i for spec in xquad_stream for i in spec.pair_ids)
  assert len(counts) == 1190
  assert np.std(list(counts.values())) / np.mean(list(counts.values())) < 0.1


def test_batch_size_not_divisible_by_host_count_is_rejected(xquad_corpus):
  sampler = make_sampler(xquad_corpus, BATCH_SIZE)
  with pytest.raises(errors.SettingError, match="batch_size 32 is not divisible by host_count 3"):
    sampler.batch(0, host_index=0, host_count=3)


def test_per_batch_larger_than_a_language_pair_pool_is_rejected(mlqa_corpus):
  smallest = min(len(shared_ids(mlqa_corpus, x, y))
                 for x, y in itertools.permutations(mlqa_corpus.languages, 2))
  with pytest.raises(errors.SettingError,
                     match=rf"larger than the {smallest} pair ids available for language pair "
                           r"\((es, zh|ar, es|es, ar|zh, es)\)"):
    make_sampler(mlqa_corpus, smallest + 1, cross_pairs="per_batch")


def test_per_example_batch_larger_than_all_shared_ids_is_rejected(xquad_corpus):
  with pytest.raises(errors.SettingError,
                     match=r"larger than the 1190 pair ids available over all language pairs"):
    make_sampler(xquad_corpus, 2048, alpha=0.0)


def test_batch_larger_than_a_language_pool_is_rejected(xquad_corpus):
  with pytest.raises(errors.SettingError,
                     match=r"larger than the 1190 pair ids available for language \(ar, ar\)"):
    make_sampler(xquad_corpus, 2048, alpha=1.0)


def test_cross_batches_need_two_languages(xquad_corpus):
  english = corpora.ParallelCorpus(("en",), {"en": xquad_corpus.pairs["en"]})
  with pytest.raises(errors.SettingError, match="cross-lingual batches need two languages"):
    make_sampler(english, BATCH_SIZE, alpha=0.5)


# sha256 of 62 batches (host 1 of 2, batch 16) the sampler drew before HybridSchedule existed
# (main at 7f448e0): the same settings must keep drawing the same batches.
GOLDEN = [
    ("xquad", {"alpha": 0.5, "seed": 0},
     "27679a4bd6c9dade4b33bdcf58452a47a4f47bc088c1f90b8f32640dc093eb2f"),
    ("xquad", {"alpha": 0.5, "cross_pairs": "per_batch", "seed": 5},
     "3970edc93d09ece020bc303769336a4bad03a9b5112aa5b9901a28694436ca5b"),
    ("mlqa", {"alpha": 0.5, "language_sampling": "size", "language_temperature": 2.0, "seed": 3},
     "d3f4201c149b9c9f016a10c05f0823b0d70bbf360bbb14d19b7a6ef5a32673b6"),
    ("xquad", {"alpha": 1.0, "mono_mixed_languages": True, "seed": 4},
     "14031a8ca94a64db34277bdbb0de07f2dcb239b0eb65b6c50d010d0373a10f69"),
    ("xquad", {"alpha": 0.3, "source_temperature": 3.0, "seed": 9},
     "35e49ffa1992fcafd61cda8c98aad72fee59adbed9578b0c483b00b95cda0634")
]


@pytest.mark.parametrize("corpus_name,settings,digest", GOLDEN)
def test_the_same_schedule_draws_the_batches_it_always_drew(corpus_name, settings, digest,
                                                           xquad_corpus, mlqa_corpus):
  corpus = {"xquad": xquad_corpus, "mlqa": mlqa_corpus}[corpus_name]
  sampler = make_sampler(corpus, 16, **settings)
  sha = hashlib.sha256()
  for step in [*range(60), 1000, 5000]:
    spec = sampler.batch(step, 1, 2)
    sha.update(repr((spec.kind, spec.source, spec.pair_ids, spec.query_languages,
                     spec.passage_languages)).encode())
  assert sha.hexdigest() == digest
