"""Template sentences for the MiniLM benchmarks (``bench/accuracy.py``, ``bench/policy.py``): a seeded
generator of in-domain sentences plus hand-written out-of-domain ones."""

from __future__ import annotations

import random

PEOPLE = ["the cat", "a young woman", "my neighbor", "the old man", "a small dog", "the teacher", "our team",
          "the engineer", "a child", "the chef", "the pilot", "a musician", "the doctor", "my brother", "the mayor",
          "a tourist", "the students", "her grandmother"]
ACTIONS = ["is reading", "painted", "is cooking", "found", "wants to buy", "is repairing", "forgot", "cleaned",
           "is looking for", "described", "sold", "borrowed", "photographed", "carried"]
THINGS = ["a book about history", "the red bicycle", "a pot of soup", "an old photograph", "a new laptop",
          "the broken window", "the car keys", "a map of the city", "a song for the festival", "a warm blanket",
          "the garden gate", "a ticket to Paris", "the quarterly report", "a wooden chair"]
PLACES = ["in the kitchen", "at the station", "near the river", "during the storm", "before breakfast",
          "in the library", "after the meeting", "on a sunny afternoon", "at the airport", "in the quiet park",
          "at midnight", "on the train"]
TEMPLATES = [
    "{P} {A} {T} {L}.",
    "Why {a_q} {p} {v} {T} {L}?",
    "Yesterday {p} {past} {T}, and everyone was {feel}.",
    "{Org} announced {news} {when}.",
    "How do I {task} on my {device}?",
    "The {food} tastes {taste} with {extra}.",
    "I think {topic} is {opinion} because {reason}.",
    "{N} {animals} were seen {L} {when_past}.",
    "Please {request} {T} {when}.",
    "The weather {L} will be {weather} {when}.",
]
FILL = {
    "a_q": ["did"], "v": ["find", "sell", "describe", "forget", "repair", "carry"],
    "feel": ["surprised", "happy", "worried", "confused", "relieved", "excited"],
    "Org": ["The city council", "A small startup", "The university", "The football club", "The central bank",
            "A local bakery", "The hospital"],
    "news": ["a new policy", "record profits", "a surprising merger", "plans for a new stadium",
             "a free concert", "higher interest rates", "a recall of its products"],
    "when": ["this morning", "last week", "on Monday", "next year", "tonight", "in the spring", "soon"],
    "when_past": ["this morning", "last week", "on Monday", "last year", "yesterday", "in the spring"],
    "past": ["painted", "found", "cleaned", "sold", "borrowed", "photographed", "carried", "described", "forgot"],
    "task": ["reset my password", "update the software", "turn off notifications", "back up my photos",
             "connect to wifi", "change the language", "free up storage"],
    "device": ["phone", "laptop", "tablet", "smart TV", "printer", "watch"],
    "food": ["soup", "bread", "salad", "coffee", "pasta", "curry", "cake"],
    "taste": ["better", "strange", "delicious", "too salty", "bitter", "sweet"],
    "extra": ["fresh herbs", "a little lemon", "extra cheese", "black pepper", "honey", "garlic"],
    "topic": ["remote work", "electric cars", "learning languages", "this movie", "public transport",
              "the new library", "online shopping"],
    "opinion": ["overrated", "very useful", "the future", "too expensive", "a good idea", "confusing"],
    "reason": ["it saves time", "everyone talks about it", "the prices keep rising", "it is convenient",
               "my friends recommended it", "the reviews were bad"],
    "N": ["Two", "Several", "Dozens of", "Three", "Hundreds of", "A few"],
    "animals": ["deer", "wolves", "dolphins", "owls", "foxes", "bees", "horses"],
    "request": ["bring", "return", "check", "send me", "print", "find"],
    "weather": ["sunny", "cold and windy", "rainy", "foggy", "unusually warm", "stormy"],
}
OUT_OF_DOMAIN = [
    "The stock market fell sharply today.", "Photosynthesis converts light into chemical energy.",
    "She scored the winning goal in the final minute.", "Quantum computers use qubits.",
    "He missed the last train home.", "Vaccines train the immune system.", "The committee approved the budget.",
    "A volcano erupted on the island.", "The software update fixed the bug.",
    "They adopted a kitten from the shelter.", "Interest in ancient Greek philosophy is growing.",
    "The derivative of a constant is zero.", "Our flight was delayed by three hours.",
    "Children learn languages faster than adults.", "The orchestra rehearsed Beethoven's ninth symphony.",
    "Mount Everest is the highest mountain on Earth.", "Mix the flour and the eggs slowly.",
    "The server crashed because the disk was full.", "Elections will be held in November.",
    "Honey never spoils if it is stored properly.",
]


def sentences(n_train: int = 200, n_eval: int = 60, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Template sentences: (train, held-out from the same templates, out-of-domain free-form sentences).

    Held-out sentences are never seen in distillation; the out-of-domain ones come from no template.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n_train + n_eval:
        t = TEMPLATES[len(out) % len(TEMPLATES)]
        p = rng.choice(PEOPLE)
        fields = {k: rng.choice(v) for k, v in FILL.items()}
        text = t.format(P=p[0].upper() + p[1:], p=p, A=rng.choice(ACTIONS), T=rng.choice(THINGS),
                        L=rng.choice(PLACES), **fields)
        text = text[0].upper() + text[1:]
        if text not in seen:
            seen.add(text)
            out.append(text)
    rng.shuffle(out)
    return out[:n_train], out[n_train:], list(OUT_OF_DOMAIN)
