#!/usr/bin/env python3
"""Builds the demo model's training data from the unpacked packages in <cache>/x and <cache>/npm (see build.sh).

Writes <cache>/out:
  pretrain.jsonl      {"text": ...} documents and {"messages": ...} chat examples (train split), shuffled
  chat-train.jsonl    the chat examples of the train split (SFT, drafter training)
  chat-heldout.jsonl  held-out conversations with their reference answers
  prompts.jsonl       held-out benchmark prompts {"kind", "messages"} (the last turn is the user's)
  stats.json          counts per source and kind
Deterministic: the split and every template choice come from a hash of the item, the shuffle from a fixed seed.
"""
import glob
import gzip
import hashlib
import json
import os
import random
import re
import sys

cache = sys.argv[1]
X, NPM, OUT = os.path.join(cache, "x"), os.path.join(cache, "npm"), os.path.join(cache, "out")
os.makedirs(OUT, exist_ok=True)
HELD_OUT_PERCENT = 3


def h(s):
    return int(hashlib.sha1(s.encode("utf-8")).hexdigest()[:8], 16)


def held_out(key):
    return h("split:" + key) % 100 < HELD_OUT_PERCENT


def pick(key, options):
    return options[h(key) % len(options)]


def clean(s):
    return re.sub(r"\s+", " ", s).strip()


def sentences(text):
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", text) if s]


def cut(text, limit):
    """The longest prefix of whole paragraphs (else sentences) within limit characters."""
    if len(text) <= limit:
        return text
    out = ""
    for para in text.split("\n\n"):
        if len(out) + len(para) + 2 > limit:
            break
        out = out + "\n\n" + para if out else para
    if out:
        return out
    for s in sentences(text):
        if len(out) + len(s) + 1 > limit:
            break
        out = out + " " + s if out else s
    return out or text[:limit]


docs, chats, stats = [], [], {}


def doc(source, text):
    text = text.strip()
    if len(text) > 40:
        docs.append({"text": text})
        stats[source] = stats.get(source, 0) + 1


def chat(kind, key, messages):
    chats.append((kind, key, messages))


def user(c):
    return {"role": "user", "content": c}


def assistant(c):
    return {"role": "assistant", "content": c}


# --- WordNet: glosses as text, and definition questions -------------------------------------------------------------
POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
synsets = []
for part in ["noun", "verb", "adj", "adv"]:
    with open(os.path.join(X, "wordnet-base/usr/share/wordnet/data." + part), encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  ") or " | " not in line:
                continue
            head, gloss = line.rstrip().split(" | ", 1)
            fields = head.split(" ")
            count = int(fields[3], 16)
            words = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
            words = [re.sub(r"\((a|p|ip)\)$", "", w) for w in words]
            pieces = [p.strip() for p in gloss.strip().split("; ")]
            definition = "; ".join(p for p in pieces if not p.startswith('"')).strip()
            examples = [p.strip('"') for p in pieces if p.startswith('"')]
            if definition:
                synsets.append((words, POS[fields[2]], definition, examples))

for i in range(0, len(synsets), 25):
    doc("wordnet", "\n".join(f"{s[0][0]} ({s[1]}): {s[2]}" for s in synsets[i:i + 25]))

QUESTIONS = [
    'What does "{w}" mean?', "Define {w}.", 'What is the meaning of the word "{w}"?', 'Give me a short definition of "{w}".',
    "What does the {pos} {w} mean?", "Explain the word {w}.",
]


def definition_answer(key, words, pos, definition, examples):
    w = words[0]
    first = pick(key + "a", ['"{w}" is a {pos} meaning {d}.', "As a {pos}, {w} means {d}.", "{W} ({pos}): {d}."])
    text = first.format(w=w, W=w[:1].upper() + w[1:], pos=pos, d=definition)
    if examples:
        text += f' For example: "{examples[0]}".'
    if len(words) > 1:
        text += " Synonyms: " + ", ".join(words[1:4]) + "."
    return text


seen_words = set()
definition_items = []
for words, pos, definition, examples in synsets:
    w = words[0]
    if not re.fullmatch(r"[a-z][a-z '-]{1,30}", w) or (w, pos) in seen_words:
        continue
    seen_words.add((w, pos))
    key = f"wn:{w}:{pos}"
    q = pick(key, QUESTIONS).format(w=w, pos=pos)
    a = definition_answer(key, words, pos, definition, examples)
    definition_items.append((key, q, a))
    chat("definition", key, [user(q), assistant(a)])

# Multi-turn: two definitions in one conversation.
for i in range(0, min(len(definition_items) - 1, 12000), 2):
    (k1, q1, a1), (k2, _, a2) = definition_items[i], definition_items[i + 1]
    w2 = k2.split(":")[1]
    follow = pick(k2 + "f", ['And what about "{w}"?', 'Thanks. Now define "{w}".', 'What does "{w}" mean, then?']).format(w=w2)
    chat("multiturn", k1 + "|" + k2, [user(q1), assistant(a1), user(follow), assistant(a2)])


# --- FAQ: Python and Perl ---------------------------------------------------------------------------------------------
def rst_text(s):
    # Sphinx roles: :meth:`~str.split` shows "split" (a leading ~ keeps the last component), :func:`!split` "split"
    # (a leading ! only turns the link off), :ref:`text <target>` "text".
    s = re.sub(r":[a-z:]+:`~[^`<]*?([^.`<]+)`", r"\1", s)
    s = re.sub(r":[a-z:]+:`!?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", s)
    s = re.sub(r"`([^`<]+?)\s*<[^>]*>`_+", r"\1", s)
    s = s.replace("``", "")
    s = re.sub(r"^\.\. .*$", "", s, flags=re.M)
    s = re.sub(r"\n{3,}", "\n\n", s)
    return s.strip()


faq = []
for path in sorted(glob.glob(os.path.join(X, "python3.11-doc/usr/share/doc/python3.11/html/_sources/faq/*.rst.txt"))):
    lines = open(path, encoding="utf-8").read().split("\n")
    heads = [i for i in range(len(lines) - 1) if lines[i].strip().endswith("?") and re.fullmatch(r"-{3,}", lines[i + 1].strip())]
    for n, i in enumerate(heads):
        end = heads[n + 1] if n + 1 < len(heads) else len(lines)
        body = rst_text("\n".join(lines[i + 2:end]))
        body = re.split(r"\n[^\n]+\n[-=]{3,}\n", "\n" + body)[0].strip()
        if body:
            faq.append(("python", lines[i].strip(), body))


def pod_link(target):
    """The text perldoc shows for L<target>: L<name/"section"> reads '"section" in name', L</"section"> '"section"'."""
    name, slash, section = target.partition("/")
    return target if not slash or "://" in target else section if not name else f"{section} in {name}"


def pod_text(s):
    # Index entries (X<...>) and zero-width marks (Z<>) print nothing; L<text|target> prints the text.
    s = re.sub(r"[XZ]<<+\s.*?\s>>+[ \t]*|[XZ]<[^<>]*>[ \t]*", "", s)
    s = re.sub(r"^\n+", "", s)
    for _ in range(3):
        s = re.sub(r"L<<+\s*([^|>]*?)\|.*?\s*>>+|L<([^<>|]*)\|[^<>]*>", lambda m: m.group(1) or m.group(2), s)
        s = re.sub(r"L<([^<>|]+)>", lambda m: pod_link(m.group(1)), s)
        s = re.sub(r"[CLIBFES]<<+\s*(.*?)\s*>>+", r"\1", s)
        s = re.sub(r"[CLIBFES]<([^<>]*)>", r"\1", s)
    s = re.sub(r"^=(over|item|back|begin|end|for|pod|cut).*$", "", s, flags=re.M)
    s = re.sub(r"\n{3,}", "\n\n", s)
    return s.strip()


for path in sorted(glob.glob(os.path.join(X, "perl-doc/usr/share/perl/5.36.0/pod/perlfaq[1-9].pod"))):
    text = open(path, encoding="utf-8", errors="replace").read()
    for block in re.split(r"^=head2 ", text, flags=re.M)[1:]:
        question, _, body = block.partition("\n")
        body = pod_text(re.split(r"^=head[12] ", body, flags=re.M)[0])
        if question.strip().endswith("?") and body:
            faq.append(("perl", pod_text(question.strip()), body))

for lang, question, body in faq:
    doc("faq", question + "\n\n" + body)
    key = f"faq:{lang}:{question}"
    q = question if pick(key, [0, 1]) == 0 else f"{question} ({'Python' if lang == 'python' else 'Perl'})"
    chat("faq", key, [user(q), assistant(cut(body, 900))])

# --- Prose: Brown, Moby-Dick, State of the Union; continuation requests ------------------------------------------------
def brown_text(raw):
    s = re.sub(r"(\S+)/\S+", r"\1", raw)
    s = re.sub(r"\s+([,.;:!?')])", r"\1", s).replace("`` ", '"').replace(" ''", '"').replace("``", '"').replace("''", '"')
    return "\n".join(clean(p) for p in s.split("\n\n") if p.strip())


prose = []
for path in sorted(glob.glob(os.path.join(NPM, "brown/package/c[a-r][0-9][0-9]"))):
    text = brown_text(open(path, encoding="utf-8", errors="replace").read())
    doc("brown", text)
    prose.append(("brown:" + os.path.basename(path), text.split("\n")))

moby = open(os.path.join(NPM, "package/moby-dick/data/data.txt"), encoding="utf-8").read()
moby_paras = [clean(p) for p in moby.split("\n\n") if p.strip()]
for i in range(0, len(moby_paras), 12):
    doc("moby-dick", "\n".join(moby_paras[i:i + 12]))
prose.append(("moby", moby_paras))

for path in sorted(glob.glob(os.path.join(NPM, "package/sotu/data/*.txt"))):
    text = open(path, encoding="utf-8", errors="replace").read()
    sents = sentences(clean(text))
    paras = [" ".join(sents[i:i + 5]) for i in range(0, len(sents), 5)]
    for i in range(0, len(paras), 8):
        doc("sotu", "\n".join(paras[i:i + 8]))
    prose.append(("sotu:" + os.path.basename(path), paras))

CONTINUE = {"brown": "Continue this text: ", "moby": "Continue this passage from Moby-Dick: ", "sotu": "Continue this speech: "}
for name, paras in prose:
    for j, para in enumerate(paras):
        s = sentences(para)
        if len(s) < 4 or len(para) > 1200 or h(f"{name}:{j}:take") % 3:
            continue
        key = f"write:{name}:{j}"
        chat("writing", key, [user(CONTINUE[name.split(":")[0]] + " ".join(s[:2])), assistant(" ".join(s[2:5]))])

# --- Fortunes, The Devil's Dictionary, Jargon File -------------------------------------------------------------------
fortune_dir = os.path.join(X, "fortunes/usr/share/games/fortunes")
FORTUNE_TOPICS = {  # file name -> topic in the request; files with no readable topic are skipped
    "computers": "computers", "education": "education", "food": "food", "humorists": "humor", "kids": "children", "law": "law",
    "linux": "Linux", "literature": "literature", "love": "love", "magic": "magic", "medicine": "medicine", "men-women": "men and women",
    "miscellaneous": "life", "news": "the news", "people": "people", "pets": "pets", "platitudes": "common sense", "politics": "politics",
    "riddles": "riddles", "science": "science", "songs-poems": "poetry", "sports": "sports", "wisdom": "wisdom", "work": "work",
    "fortunes": "fortune", "definitions": "definitions", "cookie": "luck", "art": "art",
}
for path in sorted(glob.glob(os.path.join(fortune_dir, "*"))):
    topic = FORTUNE_TOPICS.get(os.path.basename(path))
    if topic is None:
        continue
    entries = [e.strip("\n") for e in open(path, encoding="utf-8", errors="replace").read().split("\n%\n") if e.strip()]
    for i in range(0, len(entries), 10):
        doc("fortunes", "\n\n".join(entries[i:i + 10]))
    for j, e in enumerate(entries):
        if len(e) < 280 and "\t" not in e[:1]:
            key = f"quote:{topic}:{j}"
            q = pick(key, ["Tell me a saying about {t}.", "Share a quote about {t}.", "Give me a fortune-cookie message about {t}."])
            chat("quote", key, [user(q.format(t=topic.replace("-", " "))), assistant(e.strip())])


def dict_entries(name):
    text = gzip.open(os.path.join(X, f"dict-{name}/usr/share/dictd/{name}.dict.dz"), "rt", encoding="utf-8", errors="replace").read()
    return [e.strip() for e in re.split(r"\n\s*\n(?=[A-Z][A-Z' -]+, [a-z]+\.)", text) if e.strip()]


for e in dict_entries("devil"):
    m = re.match(r"([A-Z][A-Z' -]+), ([a-z.]+)\s+(.*)", e, flags=re.S)
    if not m:
        continue
    doc("devil", e)
    word, body = m.group(1).lower(), clean(m.group(3))
    if 10 < len(body) < 700:
        chat("devil", "devil:" + word, [user(f'How does The Devil\'s Dictionary define "{word}"?'), assistant(body)])

jargon = gzip.open(os.path.join(X, "dict-jargon/usr/share/dictd/jargon.dict.dz"), "rt", encoding="utf-8", errors="replace").read()
for i, block in enumerate(re.split(r"\n(?=\S)", jargon)):
    if len(block) > 80:
        doc("jargon", re.sub(r"[{}]", "", block))

# --- Split, shuffle, write ----------------------------------------------------------------------------------------------
train, heldout = [], []
for kind, key, messages in chats:
    (heldout if held_out(key) else train).append((kind, key, messages))
    stats["chat:" + kind] = stats.get("chat:" + kind, 0) + 1

rng = random.Random(20261127)
mix = docs + [{"messages": m} for _, _, m in train]
rng.shuffle(mix)


def write(name, rows):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


write("pretrain.jsonl", mix)
chat_train = [{"kind": k, "messages": m} for k, _, m in train]
rng.shuffle(chat_train)
write("chat-train.jsonl", chat_train)
write("chat-heldout.jsonl", [{"kind": k, "messages": m} for k, _, m in heldout])
prompts, per_kind = [], {}
for kind in ["definition", "faq", "writing", "multiturn", "quote", "devil"]:
    rows = sorted((h("prompt:" + key), m) for k, key, m in heldout if k == kind)
    for _, m in rows[:12]:
        prompts.append({"kind": kind, "messages": m[:-1]})
    per_kind[kind] = min(12, len(rows))
write("prompts.jsonl", prompts)
stats["held_out_prompts"] = per_kind
stats["train_chat"], stats["heldout_chat"], stats["documents"] = len(train), len(heldout), len(docs)
with open(os.path.join(OUT, "stats.json"), "w") as f:
    json.dump(stats, f, indent=1, sort_keys=True)
print(json.dumps(stats, sort_keys=True))
