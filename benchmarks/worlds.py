"""Synthetic worlds for the training benchmark, built independently of the demo corpus: each has its own
generated corpus, byte-level BPE tokenizer and vocabulary, tiny GPT-2-style model (its own depth and
width, pretrained briefly on that corpus), chat format, response length and hidden preference.

A world also simulates its users the way ``rlhf_loop.simulator`` does for the demo (a catalogue of
prompts with Zipf popularity; users who weigh the hidden features slightly differently, a threshold and
rating noise), so ``workers.training.model.synthetic.simulated_pairs`` builds its pairs with the
aggregator's rules. Everything is deterministic from the world's seed; the model is cached under
``var/bench/worlds/<name>`` and rebuilt only when its spec changes.

The preferences differ on purpose: ``garden`` favours long, on-topic answers (shorter is not a
universal win), ``ledger`` terse factual ones that copy a number, ``glyph`` (a made-up language) a
formal frame around the named entity.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlhf_loop.simulator import seeded_rng

VERSION = 2
"""Bump when a world's corpus, preference or build changes: cached models of another version are rebuilt."""
ROOT = Path("var/bench/worlds")
_WORD = re.compile(r"[a-z]+|\d+|[.?!]")


@dataclass(frozen=True)
class Prompt:
    text: str


@dataclass(frozen=True)
class Shape:
    """The world's model and its pretraining: kept small, so a world builds in seconds on 2 cores."""

    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    n_positions: int = 96
    n_examples: int = 4000
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3


@dataclass(frozen=True)
class World:
    name: str
    seed: int
    shape: Shape
    tokens: tuple[str, str, str, str]
    """Pad, user, assistant and end token of this world's chat format (the end token is EOS)."""
    max_new_tokens: int
    """Response length the world's tasks need (generation and PPO)."""
    weights: dict[str, float] = field(hash=False)
    baseline: float = 0.3
    threshold: tuple[float, float] = (0.45, 0.6)
    prompt: Callable[[random.Random], str] = field(hash=False, compare=False, repr=False, default=None)
    response: Callable[[random.Random, str], str] = field(hash=False, compare=False, repr=False, default=None)
    features: Callable[[str, str], dict[str, float]] = field(hash=False, compare=False, repr=False, default=None)

    def score(self, prompt: str, response: str, weights: dict[str, float] | None = None) -> float:
        """The hidden preference score in [0, 1]."""
        f = self.features(prompt, response)
        total = self.baseline + sum(w * f[k] for k, w in (weights or self.weights).items())
        return min(1.0, max(0.0, total))

    @property
    def chat_template(self) -> str:
        _, user, assistant, end = self.tokens
        return (
            "{% for m in messages %}{% if m['role'] == 'user' %}" + user + "{{ m['content'] }}"
            "{% else %}" + assistant + "{{ m['content'] }}" + end + "{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}" + assistant + "{% endif %}"
        )

    def key(self) -> str:
        spec = {"version": VERSION, "name": self.name, "seed": self.seed, "shape": asdict(self.shape)}
        spec |= {"tokens": self.tokens, "max_new_tokens": self.max_new_tokens}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def degenerate(ws: list[str]) -> bool:
    """Next to nothing or a loop: fewer than 2 words, or a bigram 3+ times."""
    if len(ws) < 2:
        return True
    bigrams = Counter(zip(ws, ws[1:], strict=False))
    return max(bigrams.values()) >= 3


# --- garden: long, on-topic care advice wins --------------------------------------------------------
PLANTS = (
    *("tomato", "basil", "fern", "orchid", "cactus", "rose", "mint", "lettuce", "pepper", "ivy", "tulip", "sage"),
    *("thyme", "lily", "bean", "pea", "carrot", "daisy", "maple", "palm", "moss", "onion", "melon", "iris"),
)
PLACES = ("on the balcony", "by the window", "in the garden", "in a pot", "in the kitchen", "on the porch")
SEASONS = ("spring", "summer", "autumn", "winter")
WHERE = ("inside", "outside")


def garden_prompt(rng: random.Random) -> str:
    plant, season, place = rng.choice(PLANTS), rng.choice(SEASONS), rng.choice(PLACES)
    return rng.choice(
        (
            f"how should i care for my {plant} {place} in {season}",
            f"my {plant} {place} looks sad this {season} what now",
            f"any tips for a {plant} {place} during {season}",
            f"what does a {plant} {place} need in {season}",
        )
    )


def _garden_subject(prompt: str) -> tuple[str, str]:
    ws = words(prompt)
    return next((w for w in ws if w in PLANTS), ""), next((w for w in ws if w in SEASONS), "")


def garden_response(rng: random.Random, prompt: str) -> str:
    plant, season = _garden_subject(prompt)
    name = plant if rng.random() < 0.6 else rng.choice(PLANTS)
    pool = [
        lambda: f"water the {name} every {rng.randint(2, 9)} days .",
        lambda: f"keep it in {rng.choice(('bright', 'soft', 'full', 'low'))} light .",
        lambda: f"feed it {rng.choice(('compost', 'seaweed', 'bone meal'))} once a month .",
        lambda: f"in {season if rng.random() < 0.6 else rng.choice(SEASONS)} move it {rng.choice(WHERE)} .",
        lambda: "trim the old leaves gently .",
        lambda: f"check the soil of the {name} often .",
    ]
    sentences = [rng.choice(pool)() for _ in range(rng.randint(1, 5))]
    if rng.random() < 0.1:
        sentences = [sentences[0]] * 3
    return " ".join(sentences)


def garden_features(prompt: str, response: str) -> dict[str, float]:
    plant, season = _garden_subject(prompt)
    ws = words(response)
    others = {w for w in ws if w in PLANTS} - {plant}
    return {
        "sentences": min(ws.count("."), 5) / 5,  # longer advice is better, up to five sentences
        "names_plant": float(plant in ws),
        "names_season": float(season in ws),
        "wrong_plant": float(bool(others)),
        "degenerate": float(degenerate(ws)),
    }


GARDEN = World(
    "garden",
    101,
    Shape(n_layer=2, n_head=4, n_embd=96, vocab_size=400),
    ("<pad>", "<ask>", "<tip>", "<done>"),
    max_new_tokens=48,
    weights={"sentences": 0.5, "names_plant": 0.2, "names_season": 0.1, "wrong_plant": -0.3, "degenerate": -0.5},
    baseline=0.1,
    threshold=(0.4, 0.6),
    prompt=garden_prompt,
    response=garden_response,
    features=garden_features,
)


# --- ledger: terse answers that copy the account number win ------------------------------------------
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday")


def ledger_prompt(rng: random.Random) -> str:
    acct, day = rng.randint(1000, 9999), rng.choice(DAYS)
    return rng.choice(
        (
            f"balance for acct {acct} on {day} ?",
            f"acct {acct} how much is left {day} ?",
            f"what does {acct} hold {day} ?",
        )
    )


def _ledger_subject(prompt: str) -> tuple[str, str]:
    ws = words(prompt)
    return next((w for w in ws if w.isdigit()), ""), next((w for w in ws if w in DAYS), "")


def ledger_response(rng: random.Random, prompt: str) -> str:
    acct, day = _ledger_subject(prompt)
    parts = []
    if rng.random() < 0.4:
        parts.append(rng.choice(("sorry for the wait .", "unfortunately it took a while .")))
    number = acct if rng.random() < 0.6 else str(rng.randint(1000, 9999))
    parts.append(f"acct {number} holds {rng.randint(10, 999)} {'credits' if rng.random() < 0.6 else 'coins'}")
    if rng.random() < 0.5:
        parts.append(f"as of {day if rng.random() < 0.7 else rng.choice(DAYS)}")
    if rng.random() < 0.4:
        parts.append(rng.choice(("anything else today ?", "let me know if you need more .")))
    return " ".join(parts)


def ledger_features(prompt: str, response: str) -> dict[str, float]:
    acct, day = _ledger_subject(prompt)
    ws = words(response)
    return {
        "copies_account": float(acct in ws),
        "says_credits": float("credits" in ws),
        "right_day": float(day in ws),
        "apologetic": float("sorry" in ws or "unfortunately" in ws),
        "wordy": float(len(ws) > 10),
        "degenerate": float(degenerate(ws)),
    }


LEDGER = World(
    "ledger",
    202,
    Shape(n_layer=3, n_head=2, n_embd=64, vocab_size=300),
    ("[pad]", "[q]", "[a]", "[eoa]"),
    max_new_tokens=28,
    weights={
        "copies_account": 0.35,
        "says_credits": 0.15,
        "right_day": 0.15,
        "apologetic": -0.25,
        "wordy": -0.25,
        "degenerate": -0.5,
    },
    baseline=0.35,
    threshold=(0.45, 0.65),
    prompt=ledger_prompt,
    response=ledger_response,
    features=ledger_features,
)


# --- glyph: a made-up language; a formal frame around the named entity wins ---------------------------
def _lexicon(seed: int, n: int) -> tuple[str, ...]:
    rng, out = random.Random(seed), []
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    while len(out) < n:
        w = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(1, 3)))
        if w not in out and w not in ("vel", "tash"):
            out.append(w)
    return tuple(out)


GLYPH_WORDS, GLYPH_NAMES = _lexicon(303, 48), tuple(w.capitalize() for w in _lexicon(304, 16))


def glyph_prompt(rng: random.Random) -> str:
    return " ".join([*rng.sample(GLYPH_WORDS, 2), rng.choice(GLYPH_NAMES).lower(), rng.choice(GLYPH_WORDS), "?"])


def _glyph_name(prompt: str) -> str:
    return next((w for w in words(prompt) if w.capitalize() in GLYPH_NAMES), "")


def glyph_response(rng: random.Random, prompt: str) -> str:
    name = _glyph_name(prompt)
    ws = [rng.choice(GLYPH_WORDS) for _ in range(rng.randint(2, 12))]
    if rng.random() < 0.5:
        ws.insert(rng.randint(0, len(ws)), name if rng.random() < 0.7 else rng.choice(GLYPH_NAMES).lower())
    if rng.random() < 0.5:
        ws.insert(0, "vel")
    if rng.random() < 0.5:
        ws.append("tash")
    return " ".join(ws) + " ."


def glyph_features(prompt: str, response: str) -> dict[str, float]:
    ws = words(response)
    content = [w for w in ws if w != "."]
    return {
        "honorific": float(bool(content) and content[0] == "vel"),
        "names_entity": float(_glyph_name(prompt) in content),
        "closes": float(bool(content) and content[-1] == "tash"),
        "fits": float(5 <= len(content) <= 14),
        "too_long": float(len(content) > 18),
        "degenerate": float(degenerate(ws)),
    }


GLYPH = World(
    "glyph",
    303,
    Shape(n_layer=2, n_head=4, n_embd=128, vocab_size=500),
    ("<_>", "<in>", "<out>", "<eot>"),
    max_new_tokens=24,
    weights={
        "honorific": 0.25,
        "names_entity": 0.25,
        "closes": 0.2,
        "fits": 0.1,
        "too_long": -0.3,
        "degenerate": -0.5,
    },
    baseline=0.15,
    threshold=(0.4, 0.6),
    prompt=glyph_prompt,
    response=glyph_response,
    features=glyph_features,
)

WORLDS = {w.name: w for w in (GARDEN, LEDGER, GLYPH)}


# --- the simulator of a world's users (the interface ``simulated_pairs`` uses) ------------------------
@dataclass(frozen=True)
class User:
    ref: str
    weights: dict[str, float] = field(hash=False)
    threshold: float


class WorldSim:
    """A world's prompts (Zipf popularity over a catalogue distinct from no-one's but the world's) and users."""

    def __init__(self, world: World, n_prompts: int = 400, n_users: int = 200, noise: float = 0.1) -> None:
        self.world, self.noise = world, noise
        rng = random.Random(world.seed + 17)
        seen: dict[str, None] = {}
        for _ in range(100 * n_prompts):  # bounded: a world with fewer distinct prompts gets them all
            seen.setdefault(world.prompt(rng))
            if len(seen) == n_prompts:
                break
        self.prompts = [Prompt(t) for t in seen]
        self._cum = list(itertools.accumulate(1.0 / (r + 1) ** 1.1 for r in range(len(self.prompts))))
        lo, hi = world.threshold
        self.users = [
            User(f"u{i}", {k: w * rng.uniform(0.7, 1.3) for k, w in world.weights.items()}, rng.uniform(lo, hi))
            for i in range(n_users)
        ]

    def sample_prompts(self, n: int, rng: random.Random) -> list[Prompt]:
        return rng.choices(self.prompts, cum_weights=self._cum, k=n)

    def sample_users(self, n: int, rng: random.Random) -> list[User]:
        return rng.choices(self.users, k=n)

    def rate(self, user: User, prompt: str, response: str) -> int:
        likes = self.world.score(prompt, response, user.weights) >= user.threshold
        flip = seeded_rng(self.world.seed, user.ref, prompt, response).random() < self.noise
        return 1 if likes != flip else -1


# --- building a world's model -------------------------------------------------------------------------
def corpus(world: World) -> list[str]:
    """Chat-formatted pretraining texts, in a fixed order."""
    rng = random.Random(world.seed)
    _, user, assistant, end = world.tokens
    out = []
    for _ in range(world.shape.n_examples):
        prompt = world.prompt(rng)
        out.append(f"{user}{prompt}{assistant}{world.response(rng, prompt)}{end}")
    return out


def build(world: World, root: Path = ROOT) -> Path:
    """The world's model directory (Hugging Face format), built unless a current one is cached."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf_loop.artifacts import write_dir_atomic
    from rlhf_loop.models.demo_kit import make_batch, train_tokenizer

    out = root / world.name
    marker = out / "world.json"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{world.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and json.loads(marker.read_text()).get("key") == world.key():
            return out
        started, s = time.perf_counter(), world.shape
        texts = corpus(world)
        pad, user, assistant, end = world.tokens
        tok = train_tokenizer(texts, s.vocab_size, special=(pad, user, assistant, end), template=world.chat_template)
        before = torch.get_num_threads()
        torch.set_num_threads(1)  # the weights must not depend on the machine's cores; one is also the fastest
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(world.seed)
                cfg = GPT2Config(
                    vocab_size=len(tok),
                    n_positions=s.n_positions,
                    n_embd=s.n_embd,
                    n_layer=s.n_layer,
                    n_head=s.n_head,
                    bos_token_id=tok.eos_token_id,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                    resid_pdrop=0.0,
                    embd_pdrop=0.0,
                    attn_pdrop=0.0,
                )
                model = GPT2LMHeadModel(cfg)
                model.loss_type = "ForCausalLM"
                ids = [r[: s.n_positions] for r in tok(texts, add_special_tokens=False)["input_ids"]]
                answer = tok.convert_tokens_to_ids(assistant)
                opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.01)
                warmup = max(1, s.steps // 20)
                sched = torch.optim.lr_scheduler.LambdaLR(
                    opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, i / s.steps)))
                )
                gen = torch.Generator().manual_seed(world.seed)
                model.train()
                for _ in range(s.steps):
                    pick = torch.randint(len(ids), (s.batch_size,), generator=gen).tolist()
                    x, mask, labels = make_batch([ids[i] for i in pick], tok.pad_token_id, answer)
                    loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                    sched.step()
        finally:
            torch.set_num_threads(before)
        model.eval()
        seconds = round(time.perf_counter() - started, 1)
        info = {"key": world.key(), "final_loss": round(loss.item(), 4), "seconds": seconds}

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "world.json").write_text(json.dumps(info, indent=2) + "\n")

        import shutil

        shutil.rmtree(out, ignore_errors=True)
        write_dir_atomic(out, write)
    return out
