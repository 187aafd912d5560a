"""Learning from every rating, on PostgreSQL: the dataset snapshot holds every rating as a labelled example
(training and held-out parts) and every logged prompt, rated or not; the retrain trigger counts ratings as
well as pairs; a run on thumbs alone trains (no pairs needed) and records the share of ratings it used."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.corpus import STYLES, render
from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
from rlhf_loop.preferences.dataset import (
    EXAMPLES_FILE,
    PAIRS_FILE,
    PROMPTS_FILE,
    ExampleRecord,
    PairRecord,
    is_heldout,
    read_examples,
    read_pairs,
    read_prompts,
)
from rlhf_loop.settings import DatabaseSettings, Settings
from rlhf_loop.simulator import Simulator
from schemas.tables import Adapter, TrainingRun
from tests.support.training import add_rating, add_response, store_pairs, store_ratings
from workers.training import tasks
from workers.training.pipeline import create_run, run, run_config
from workers.training.snapshot import new_examples_since_last_snapshot, snapshot_counts, take_snapshot

pytestmark = pytest.mark.integration
FRACTION = 0.2
ORPHANS = 5
"""Ratings whose response has not arrived: stored, but not yet trainable."""


def thumbs(sim: Simulator, prompts: list[str], seed: int) -> list[ExampleRecord]:
    """One response in a corpus style per prompt, rated once by a random user: real traffic's shape."""
    rng = random.Random(seed)
    by_text = {p.text: p for p in sim.prompts}
    out = []
    for text in prompts:
        response = render(by_text[text], rng.choice(STYLES), rng)
        user = rng.choice(sim.users)
        out.append(ExampleRecord(text, response, sim.rate(user, text, response), user.ref, "base"))
    return out


@pytest.fixture
def world() -> tuple[Simulator, list[str]]:
    sim = Simulator(3, n_prompts=400)
    return sim, [p.text for p in sim.prompts]


@pytest.fixture
def sessions(pg_url: str) -> Iterator[sessionmaker[Session]]:
    upgrade(pg_url)
    engine = make_engine(DatabaseSettings(url=pg_url))
    yield make_sessionmaker(engine)
    engine.dispose()


def add_orphans(session: Session, n: int) -> None:
    for i in range(n):
        add_rating(session, f"r-missing-{i}", f"a prompt whose response is late {i}", 1, f"late-{i}", "base")


def test_the_snapshot_holds_every_rating_and_every_logged_prompt(
    sessions: sessionmaker[Session], world: tuple[Simulator, list[str]], tmp_path: Path
) -> None:
    sim, prompts = world
    rated = thumbs(sim, prompts[:250], seed=0)
    pairs = [PairRecord(p, f"good answer {i}", f"bad answer {i}") for i, p in enumerate(prompts[250:290])]
    unrated = prompts[290:]  # logged, never rated: in no pair and no example
    with sessions.begin() as session:
        store_ratings(session, rated)
        store_pairs(session, pairs)
        for p in unrated:
            add_response(session, p, "a response nobody rated")
        add_orphans(session, ORPHANS)
    with sessions.begin() as session:
        snapshot = take_snapshot(session, tmp_path, FRACTION, split_seed=0)
    path = Path(snapshot.path)

    examples = read_examples(path / EXAMPLES_FILE)
    assert sorted(examples, key=str) == sorted(rated, key=str)  # every rating, once, with rater and adapter
    held = [e for e in examples if is_heldout(e.prompt, FRACTION)]
    assert held and len(held) < len(examples)  # the held-out part is in the file too
    assert sorted(read_pairs(path / PAIRS_FILE), key=str) == sorted(pairs, key=str)
    logged = read_prompts(path / PROMPTS_FILE)
    assert logged == sorted(prompts) and set(unrated) <= set(logged)

    counts = snapshot_counts(snapshot)
    assert counts.ratings_total == len(rated) + ORPHANS and counts.ratings_in_snapshot == len(rated)
    assert counts.examples_heldout == len(held) and counts.examples_train == len(rated) - len(held)
    assert counts.pairs_train + counts.pairs_heldout == len(pairs) == snapshot.n_train + snapshot.n_heldout
    assert counts.ratings_used_share == pytest.approx(len(rated) / (len(rated) + ORPHANS))
    assert counts.prompts == len(prompts)


def test_the_retrain_trigger_fires_on_thumbs_alone(
    sessions: sessionmaker[Session], world: tuple[Simulator, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim, prompts = world
    enqueued: list[str] = []
    monkeypatch.setattr(tasks.retrain, "delay", enqueued.append)
    with sessions.begin() as session:
        store_ratings(session, thumbs(sim, prompts[:20], seed=1))
        store_pairs(session, [PairRecord(prompts[20], "a", "b")])
        add_orphans(session, ORPHANS)  # not trainable yet: not counted
    with sessions() as session:
        assert new_examples_since_last_snapshot(session) == 21
    with sessions.begin() as session:
        take_snapshot(session, tmp_path, FRACTION, split_seed=0)
    with sessions() as session:
        assert new_examples_since_last_snapshot(session) == 0

    with sessions.begin() as session:
        store_ratings(session, thumbs(sim, prompts[30:33], seed=2))  # three ratings, no new pair
    with sessions() as session:
        assert new_examples_since_last_snapshot(session) == 3
    settings = Settings(training={"min_new_examples": 4})
    assert tasks.start_if_due(settings, sessions) is None and not enqueued
    run_id = tasks.start_if_due(Settings(training={"min_new_examples": 3}), sessions)
    assert enqueued == [run_id]
    with sessions() as session:
        assert session.get(TrainingRun, run_id).metrics["reason"] == "3 new training examples"


def test_the_old_setting_name_still_sets_the_trigger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLHF_TRAINING__MIN_NEW_PAIRS", "17")
    assert Settings().training.min_new_examples == 17


def test_a_run_on_thumbs_alone_trains_and_records_the_share_of_ratings_it_used(
    sessions: sessionmaker[Session],
    world: tuple[Simulator, list[str]],
    pg_url: str,
    demo_model_dir: Path,
    tmp_path: Path,
) -> None:
    sim, prompts = world
    rated = thumbs(sim, prompts[:300], seed=3)
    with sessions.begin() as session:
        store_ratings(session, rated)
        add_orphans(session, ORPHANS)
    hyper = {
        "reward": {"epochs": 1},
        "ppo": {"episodes": 32, "batch_size": 32, "minibatch_size": 16, "checkpoint_every": 1},
        "eval_prompts": 8,
    }
    settings = Settings(
        database=DatabaseSettings(url=pg_url), artifacts_dir=tmp_path, training={"hyperparameters": hyper}
    )
    with sessions.begin() as session:
        run_id = create_run(session, run_config(settings), reason="test")

    adapter_id = run(settings, sessions, run_id, str(demo_model_dir))

    with sessions() as session:
        record = session.get(TrainingRun, run_id)
        assert record.status == "succeeded" and adapter_id is not None, record.error
        adapter = session.get(Adapter, adapter_id)
    share = len(rated) / (len(rated) + ORPHANS)
    dataset = record.metrics["dataset"]
    assert dataset["ratings_used_share"] == pytest.approx(share) and dataset["ratings_in_snapshot"] == len(rated)
    assert adapter.metrics["dataset"] == dataset
    reward = record.metrics["reward"]
    assert reward["mode"] == "pointwise" and reward["heldout_accuracy"] is None
    assert reward["train_pairs"] == 0 and reward["train_examples"] == dataset["examples_train"]
    assert reward["heldout_thumbs_auc"] >= 0.7  # the corpus styles are easy to tell apart
    assert adapter.metrics["reward"]["heldout_thumbs_auc"] == reward["heldout_thumbs_auc"]
    assert REGISTRY.get_sample_value("rlhf_training_examples", {"kind": "thumbs"}) == len(rated)
    assert REGISTRY.get_sample_value("rlhf_training_examples", {"kind": "pairs"}) == 0
    assert REGISTRY.get_sample_value("rlhf_training_ratings_used_ratio") == pytest.approx(share)
    auc = REGISTRY.get_sample_value("rlhf_reward_model_heldout_thumbs_auc_ratio")
    assert auc == pytest.approx(reward["heldout_thumbs_auc"]) and not math.isnan(auc)
