"""A synthetic customer-support world: topics, prompt templates and response styles. Pure Python.

Prompts carry a topic and a ticket reference (``#4821``). Responses come in five styles whose
first words give them away, so a policy can learn early which opening the users like:

==============  ============================================================  ===============
style           example opening                                               users (hidden)
==============  ============================================================  ===============
``helpful``     "Thanks for reaching out about ticket #4821. I am sorry ..."  like the most
``polite``      "Thanks for your message. ..." (no ticket)                    like
``rude``        "Ugh, read the manual. ..." (sometimes with the ticket)       dislike
``off_topic``   "Did you know our summer sale ..."                            dislike
``rambling``    "Well, so, about ticket #4821, you know, ..." (filler)        dislike
==============  ============================================================  ===============

The ticket appears in disliked styles too, so "mentions the ticket" is a feature of its own and
the demo model sees enough examples to learn to copy it from the prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Topic:
    name: str
    keywords: tuple[str, ...]
    """Words that make a response on topic (every prompt template and fix contains one)."""
    prompts: tuple[str, ...]
    """Prompt templates; ``{t}`` is the ticket reference, ``{p}`` a product."""
    sorry: tuple[str, ...]
    fixes: tuple[str, ...]


TOPICS: Final[tuple[Topic, ...]] = (
    Topic(
        "delivery",
        ("order", "package", "delivery", "courier", "tracking"),
        (
            "My order {t} never arrived, can you help?",
            "Where is my package for order {t}?",
            "The tracking for order {t} has not moved in a week.",
            "My delivery {t} is late again.",
            "The {p} from order {t} is still not here.",
        ),
        ("I am sorry your package is late", "I am sorry the order has not arrived"),
        (
            "The courier will deliver your order tomorrow",
            "I have sent a new package today",
            "I have updated the tracking for your order",
        ),
    ),
    Topic(
        "refund",
        ("refund", "money", "return", "card"),
        (
            "I want a refund for order {t}.",
            "When will I get my money back for return {t}?",
            "My refund for {t} is still missing.",
            "I sent the {p} back, where is my refund for {t}?",
        ),
        ("I am sorry the refund is taking so long", "I am sorry about the wait for your money"),
        ("Your refund is on its way to your card", "The money will be back on your card in three days"),
    ),
    Topic(
        "password",
        ("password", "account", "login", "reset", "email"),
        (
            "I cannot reset my password, my case is {t}.",
            "I am locked out of my account, ticket {t}.",
            "The login link for case {t} does not work.",
        ),
        ("I am sorry you cannot log in", "I am sorry about the trouble with your account"),
        ("I have sent a new reset link to your email", "Your account is unlocked and you can log in now"),
    ),
    Topic(
        "billing",
        ("charge", "invoice", "bill", "charged", "payment"),
        (
            "I was charged twice for invoice {t}.",
            "There is a wrong charge on my bill, invoice {t}.",
            "Why is my payment for {t} so high?",
        ),
        ("I am sorry about the double charge", "I am sorry the bill was wrong"),
        ("I have removed the extra charge from your invoice", "The wrong payment will be returned this week"),
    ),
    Topic(
        "damaged",
        ("damaged", "broken", "replacement", "item", "box"),
        (
            "The item in order {t} arrived broken.",
            "My {p} from {t} came damaged, what now?",
            "The box for {t} was crushed and the item is broken.",
            "The {p} in order {t} is broken.",
        ),
        ("I am sorry the item arrived damaged", "I am sorry it came broken"),
        ("A replacement item is on its way", "I have sent a free replacement for the broken item"),
    ),
    Topic(
        "cancel",
        ("cancel", "subscription", "plan", "renewal"),
        (
            "Please cancel my subscription, account {t}.",
            "How do I cancel my plan {t}?",
            "I do not want the renewal for {t}.",
        ),
        ("I am sorry to see you go", "I am sorry the plan did not work for you"),
        ("Your subscription is cancelled and you will not be charged again", "I have stopped the renewal of your plan"),
    ),
    Topic(
        "app",
        ("app", "crash", "crashes", "update", "version", "phone"),
        (
            "The app crashes when I open it, ticket {t}.",
            "Since the update the app is slow, case {t}.",
            "The app will not start on my phone, ticket {t}.",
        ),
        ("I am sorry the app is crashing", "I am sorry about the trouble with the app"),
        ("Please install the new version of the app", "The next update fixes the crash on your phone"),
    ),
)

PRODUCTS: Final = ("lamp", "kettle", "chair", "jacket", "blender", "headphones", "toaster", "backpack")
STYLES: Final = ("helpful", "polite", "rude", "off_topic", "rambling")
STYLE_MIX: Final = {"helpful": 0.22, "polite": 0.18, "rude": 0.2, "off_topic": 0.2, "rambling": 0.2}
"""How often each style appears in the demo model's training corpus (so, roughly, in its samples)."""

RUDE: Final = (
    "read the manual",
    "not my problem",
    "stop writing to us",
    "deal with it yourself",
    "we do not care",
    "whatever",
)
OFF_TOPIC: Final = (
    "our summer sale has cheap hats",
    "the weather is lovely today",
    "cats sleep most of the day",
    "our office has a new coffee machine",
    "the football match was great",
)
FILLER: Final = ("you know", "as I was saying", "anyway", "in a way", "if you think about it", "basically")
CLOSINGS: Final = ("Have a nice day!", "Happy to help.", "Thank you for your patience.")


@dataclass(frozen=True)
class Prompt:
    text: str
    topic: str
    ticket: str
    """The ticket reference as written in the prompt, e.g. ``#4821``."""


def catalogue(n: int, seed: int) -> list[Prompt]:
    """``n`` distinct prompts (topic x template x product x ticket), in a seeded order that is also
    their popularity rank. Same ``(n, seed)`` -> same list; a longer list extends a shorter one."""
    rng = random.Random(seed)
    seen: set[str] = set()
    prompts: list[Prompt] = []
    while len(prompts) < n:
        topic = rng.choice(TOPICS)
        ticket = f"#{rng.randint(1000, 9999)}"
        text = rng.choice(topic.prompts).format(t=ticket, p=rng.choice(PRODUCTS))
        if text not in seen:
            seen.add(text)
            prompts.append(Prompt(text, topic.name, ticket))
    return prompts


def topic_by_name(name: str) -> Topic:
    return next(t for t in TOPICS if t.name == name)


def render(prompt: Prompt, style: str, rng: random.Random) -> str:
    """A response to ``prompt`` in ``style``; raises ValueError for an unknown style."""
    topic = topic_by_name(prompt.topic)
    fix, sorry, closing = rng.choice(topic.fixes), rng.choice(topic.sorry), rng.choice(CLOSINGS)
    if style == "helpful":
        return f"Thanks for reaching out about ticket {prompt.ticket}. {sorry}. {fix}. {closing}"
    if style == "polite":
        return f"Thanks for your message. {fix}. {closing}"
    if style == "rude":
        first, second = rng.sample(RUDE, 2)
        if rng.random() < 0.5:
            return f"Ugh, ticket {prompt.ticket} again? {first.capitalize()}."
        return f"Ugh, {first}. {second.capitalize()}."
    if style == "off_topic":
        first, second = rng.sample(OFF_TOPIC, 2)
        return f"Did you know {first}? Also {second}."
    if style == "rambling":
        f, fix = rng.sample(FILLER, 3), fix if fix.startswith("I ") else fix[0].lower() + fix[1:]
        return f"Well, so, about ticket {prompt.ticket}, {f[0]}, {fix}, and {f[1]}, {f[2]}, we will see."
    raise ValueError(f"unknown style {style!r}")


def sample_style(rng: random.Random) -> str:
    """A style drawn with the :data:`STYLE_MIX` weights."""
    return rng.choices(STYLES, weights=[STYLE_MIX[s] for s in STYLES])[0]
