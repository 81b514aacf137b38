"""ConsistentID's prompt side: the facial caption, `<|facial|>` markers, and where their tokens are.

What the official pipelines do (JackAILab/ConsistentID HEAD; verified by running them, see
tests/tier_a_engine/test_consistentid_prompt.py):

- A fixed caption lists the parts; each part word present in the reference gets a `<|facial|>`
  marker after it and the clauses are re-emitted in the order face, ears, eyes, nose, mouth, each
  followed by "," (`mark_caption`). Clauses of missing regions are dropped with their markers.
- SD1.5: `prompt + "Detail:" + caption` (no separator); SDXL: `prompt + "; Detail:" + caption`.
  If that exceeds 77 tokens, counting each marker as one token, the caption goes first:
  `"Detail:" + caption + " Caption:" + prompt` (SDXL: `"; Detail:" ...`). Here a prompt that
  already holds `<|facial|>` markers is used as written and no caption is added.
- Markers are removed from the ids; the token fused with a region is the last BPE piece before
  each marker. The cleaned ids equal tokenising the marker-free text (markers follow whole words).

How positions are found here: on token ids, never on ComfyUI's word ids (those count weighted
segments since Dec 2024). The marker-free text is tokenised as the text encoder will see it (ComfyUI
splits it into chunks of start + 75 + end tokens); the text between consecutive markers (its
"anchor") is tokenised with the same tokenizer and searched as an id subsequence in the chunks'
content, left to right; the last id of each match is a fused position (flat index into the
concatenated chunks, i.e. into the encoder output). Weight syntax that a marker cuts through can
change an anchor's first ids, so a shorter suffix of the anchor is accepted when the whole is not found.

Everything here works on strings and id lists: no ComfyUI, no torch.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .regions import REGION_ORDER

FACIAL_MARKER = "<|facial|>"
FACIAL_TOKEN_ID = 49409          # the official id: '<|image|>' is added first (49408), then '<|facial|>'
START_ID, END_ID = 49406, 49407  # CLIP BPE <|startoftext|>, <|endoftext|> (ComfyUI's clip_l and clip_g)
MAX_LENGTH = 77                  # one CLIP window: start + 75 content tokens + end

VARIANTS = ("sd15", "sdxl")
# The caption templates of the official pipelines at HEAD (the SDXL one says "a mouth").
CAPTIONS = {"sd15": "The person has one face, one nose, two eyes, two ears, and one mouth.",
            "sdxl": "The person has one face, one nose, two eyes, two ears, and a mouth."}
DETAIL = {"sd15": "Detail:", "sdxl": "; Detail:"}
CAPTION_LAST_JOIN = " Caption:"

# Caption clause order (official marker order) and the region each part word names.
CAPTION_PART_WORDS = ("face", "ears", "eyes", "nose", "mouth")
REGION_OF_WORD = {"face": "face", "faces": "face", "eye": "eye", "eyes": "eye", "ear": "ear", "ears": "ear",
                  "nose": "nose", "noses": "nose", "mouth": "lip", "mouths": "lip", "lip": "lip", "lips": "lip"}

PAIRINGS = ("faithful", "corrected")
# Before the merge step the SD1.5 pipeline already uses the fused negative; the SDXL pipeline uses
# the plain negative (and the plain user prompt, without the caption) until the merge step.
NEGATIVE_FUSED_BEFORE_MERGE = {"sd15": True, "sdxl": False}

Token = int | None  # None: an item that is not a token id (a ComfyUI embedding vector)
Tokenize = Callable[[str], Sequence[Token]]  # text -> content ids, without start/end tokens


class FacialPromptError(ValueError):
    """A prompt whose markers cannot be placed; `problem` and `fix` are meant for the user."""

    def __init__(self, problem: str, fix: str):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem} Fix: {fix}")


def _words(text: str) -> list[str]:
    # The official caption normalisation: words and single punctuation marks, joined by spaces.
    return re.findall(r"\b\w+\b|[.,;!?]", text)


def mark_caption(caption: str, present_regions: Iterable[str]) -> str:
    """The official marked caption for the regions present (any order; names from REGION_ORDER).

    'The person has one face, one nose, ...' with face, eye, ear present ->
    'The person has one face <|facial|>, two ears <|facial|>, two eyes <|facial|>,'
    """
    present = set(present_regions)
    unknown = present - set(REGION_ORDER)
    if unknown:
        raise ValueError(f"unknown regions {sorted(unknown)}; regions are {REGION_ORDER}")
    clauses = [c.strip() for c in re.split(r"[,.;]", " ".join(_words(caption)))]
    out = []
    for word in CAPTION_PART_WORDS:
        if REGION_OF_WORD[word] not in present:
            continue
        pattern = rf"\b{word}\b"
        for i, clause in enumerate(clauses):
            if re.search(pattern, clause):
                out.append(re.sub(pattern, f"{word} {FACIAL_MARKER}", clause, count=1) + ",")
                clauses[i] = ""
                break
    return " ".join(out)


def region_named_before(segment: str) -> str | None:
    """The region named by the last word of `segment` (the word a marker follows), if any."""
    words = re.findall(r"[A-Za-z]+", segment)
    return REGION_OF_WORD.get(words[-1].lower()) if words else None


@dataclass(frozen=True)
class FacialPrompt:
    """An assembled prompt. `segments` is the marker-free text cut at the markers: marker k
    follows segments[k], and ''.join(segments) == clean_text."""

    text: str                             # with markers
    segments: tuple[str, ...]
    caption_added: bool
    long_form: bool                       # caption placed first because the prompt was too long

    @property
    def clean_text(self) -> str:
        return "".join(self.segments)

    @property
    def marker_count(self) -> int:
        return len(self.segments) - 1

    @property
    def marker_regions(self) -> tuple[str | None, ...]:
        """The region each marker's word names (None when the word is not a part name)."""
        return tuple(region_named_before(s) for s in self.segments[:-1])


def official_token_count(segments: Sequence[str], tokenize: Tokenize) -> int:
    """Content tokens of a marked text as the official length check counts them (a marker is one token)."""
    return sum(len(tokenize(s)) for s in segments) + len(segments) - 1


def build_facial_prompt(prompt: str, variant: str, present_regions: Iterable[str],
                        tokenize: Tokenize) -> FacialPrompt:
    """The official prompt assembly; a prompt that already has markers is kept as it is."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if FACIAL_MARKER in prompt:
        return FacialPrompt(prompt, tuple(prompt.split(FACIAL_MARKER)), caption_added=False, long_form=False)
    caption = mark_caption(CAPTIONS[variant], present_regions)
    text = prompt + DETAIL[variant] + caption
    long_form = official_token_count(text.split(FACIAL_MARKER), tokenize) + 2 > MAX_LENGTH
    if long_form:
        text = DETAIL[variant] + caption + CAPTION_LAST_JOIN + prompt
    return FacialPrompt(text, tuple(text.split(FACIAL_MARKER)), caption_added=True, long_form=long_form)


def plain_text(prompt: str, facial: FacialPrompt, variant: str) -> str:
    """What the positive encodes before the merge step: SD1.5 the assembled marker-free text,
    SDXL the user's prompt alone (markers removed), as the official pipelines do."""
    return facial.clean_text if variant == "sd15" else prompt.replace(FACIAL_MARKER, "")


def pair_regions(marker_regions: Sequence[str | None], present_regions: Iterable[str],
                 pairing: str) -> list[str | None]:
    """The region fused at each marker, None where a marker gets none.

    faithful:  by order, as the official code: the k-th marker takes the k-th present region in
               REGION_ORDER (face, eye, ear, nose, lip). With the caption's marker order (face, ears,
               eyes, nose, mouth) the eye image lands on "ears" and the ear image on "eyes" when both
               are present; the released weights were trained that way.
    corrected: by meaning: each marker takes the region its word names, if present.
    Markers beyond the present regions (faithful) or naming a missing region (corrected) get none.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    present = [r for r in REGION_ORDER if r in set(present_regions)]
    if pairing == "faithful":
        return [present[k] if k < len(present) else None for k in range(len(marker_regions))]
    unnamed = [k for k, r in enumerate(marker_regions) if r is None]
    if unnamed:
        raise FacialPromptError(
            f"'corrected' pairing needs each {FACIAL_MARKER} to follow a part word; marker(s) {unnamed} "
            f"(counting from 0) do not.",
            f"put each marker right after one of: {', '.join(sorted(REGION_OF_WORD))}; or use 'faithful' pairing.")
    return [r if r in present else None for r in marker_regions]


def content_positions(chunks: Sequence[Sequence[Token]], start_id: int = START_ID,
                      end_id: int = END_ID) -> list[tuple[int, Token]]:
    """(flat index, id) of every content token of chunked ids: each chunk is [start] content [end] pad...

    The flat index counts every item of the earlier chunks, so it indexes the encoder output
    (ComfyUI concatenates the chunks' outputs along the token axis).
    """
    out: list[tuple[int, Token]] = []
    offset = 0
    for chunk in chunks:
        i = 1 if len(chunk) and chunk[0] == start_id else 0
        while i < len(chunk) and chunk[i] != end_id:
            out.append((offset + i, chunk[i]))
            i += 1
        offset += len(chunk)
    return out


def find_ids(ids: Sequence[Token], pattern: Sequence[Token], start: int = 0) -> int | None:
    """Index of the first occurrence of `pattern` in `ids` at or after `start`."""
    n = len(pattern)
    for i in range(start, len(ids) - n + 1):
        if list(ids[i:i + n]) == list(pattern):
            return i
    return None


def locate_markers(chunks: Sequence[Sequence[Token]], anchors: Sequence[Sequence[Token]],
                   start_id: int = START_ID, end_id: int = END_ID) -> list[int]:
    """Flat position of the token each marker fuses with; anchors[k] = ids of the text between
    marker k-1 (or the start) and marker k. Raises FacialPromptError when a marker cannot be placed."""
    content = content_positions(chunks, start_id, end_id)
    ids = [t for _, t in content]
    cursor, positions = 0, []
    for k, anchor in enumerate(anchors):
        anchor = list(anchor)
        if not anchor:
            raise FacialPromptError(
                f"{FACIAL_MARKER} number {k} (counting from 0) follows no word (it starts the text or "
                f"follows another marker).", "put each marker right after the word it describes.")
        hit = None
        for n in range(len(anchor), 0, -1):
            found = find_ids(ids, anchor[-n:], cursor)
            if found is not None:
                hit = found + n - 1
                break
        if hit is None:
            raise FacialPromptError(
                f"the word before {FACIAL_MARKER} number {k} (counting from 0) was not found in the "
                f"tokenised prompt.", "put each marker right after a whole word, outside weight brackets.")
        positions.append(content[hit][0])
        cursor = hit + 1
    return positions


def marker_anchors(facial: FacialPrompt, tokenize: Tokenize) -> list[list[Token]]:
    """Ids of the text before each marker, tokenised alone (one list per marker)."""
    return [list(tokenize(s)) for s in facial.segments[:-1]]

