"""ConsistentID prompt assembly and facial-token positions (models/consistentid/prompt.py).

How tests/fixtures/consistentid_prompt_reference.json was produced (once, by hand, in a scratch
folder outside the repo; the official code is not part of PartID and is not imported here):
github.com/JackAILab/ConsistentID at e234008 (HEAD, Dec 2025), `functions.py` imported unchanged
(process_text_with_markers, tokenize_and_mask_noun_phrases_ends, prepare_image_token_idx), and the
prompt lines of `encode_prompt_with_trigger_word` of both pipelines re-typed in the scratch script
(caption + "Detail:" / "; Detail:", the != 77 length check, the long-form fallback, marker removal).
Tokenizer: transformers' CLIPTokenizer from ComfyUI's comfy/sd1_tokenizer with model_max_length
forced to 77 (the files say 8192: REFERENCE 8), '<|image|>' then '<|facial|>' added as special tokens
(ids 49408, 49409, as the pipelines do); tokenizer_2 (SDXL) = the same files padding with '!' (id 0)
and only '<|image|>' added, as the SDXL pipeline leaves it. `parsing` dicts hold the official mask
keys (Face, Left_Eye, Left_Ear, Nose, Upper_Lip) of the regions present, in mask-value order as
get_prepare_facemask builds them. Recorded per case: the assembled text, the marker-free text, the
77 clean ids, the marker positions, the region keys in slot order (and for SDXL the second
tokenizer's ids); plus the marked caption for every subset of regions.
"""
from __future__ import annotations

import json
import re

import pytest
from partid_rig import COMFYUI, REPORT, TESTS

from partid.models.consistentid import prompt as cp

REFERENCE = TESTS / "fixtures" / "consistentid_prompt_reference.json"
S, E = cp.START_ID, cp.END_ID
ALL = ("face", "eye", "ear", "nose", "lip")


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


def comfy_chunks(content, pad=E, size=75):
    """ComfyUI's layout of one unweighted prompt: start + 75 content + end per chunk, last one padded."""
    parts = [content[i:i + size] for i in range(0, len(content), size)] or [[]]
    chunks = [[S, *p, E] for p in parts]
    chunks[-1] += [pad] * (77 - len(chunks[-1]))
    return chunks


class WordTokenizer:
    """A toy tokenizer: one id per word or punctuation run (ids from 1000), like CLIP's pre-tokenisation."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text):
        return [self.vocab.setdefault(w, 1000 + len(self.vocab)) for w in re.findall(r"\w+|[^\s\w]+", text.lower())]


# ---------------------------------------------------------------- token-id matching on hand-made lists

def test_content_positions_skip_start_end_and_padding_per_chunk():
    chunks = [[S, 5, 6, E, E, E], [S, 7, E, 0, 0, 0]]
    assert cp.content_positions(chunks) == [(1, 5), (2, 6), (7, 7)]
    # SDXL's clip_g pads with id 0 ('!'): a content '!' before the end token is content
    assert cp.content_positions([[S, 0, 9, E, 0, 0]]) == [(1, 0), (2, 9)]


def test_positions_past_77_tokens_and_at_chunk_boundaries():
    content = list(range(2000, 2160))                       # 160 content tokens -> 3 chunks
    chunks = comfy_chunks(content)
    assert [len(c) for c in chunks] == [77, 77, 77]
    anchors = [content[70:75],                              # ends on the last content token of chunk 0
               content[75:76],                              # the first content token of chunk 1
               content[76:152],                             # an anchor spanning chunks 1 and 2
               content[152:159]]
    assert cp.locate_markers(chunks, anchors) == [75, 78, 77 * 2 + 2, 77 * 2 + 9]
    for a, p in zip(anchors, cp.locate_markers(chunks, anchors)):
        assert chunks[p // 77][p % 77] == a[-1]


def test_repeated_words_are_matched_left_to_right():
    face, eyes = 11, 12
    content = [1, face, 2, face, 3, eyes, 4, face, 5, eyes]
    chunks = comfy_chunks(content)
    anchors = [[1, face], [2, face], [3, eyes], [4, face]]
    assert cp.locate_markers(chunks, anchors) == [2, 4, 6, 8]
    # the same word as its own anchor each time: successive occurrences, never the same one twice
    assert cp.locate_markers(chunks, [[face], [face], [face]]) == [2, 4, 8]


def test_anchor_prefix_missing_from_the_stream_falls_back_to_its_suffix():
    # "(one face<|facial|>, ...:1.2)": the anchor tokenised alone keeps "(", the weighted stream does not
    paren, one, face = 30, 31, 32
    chunks = comfy_chunks([7, one, face, 8, 9])
    assert cp.locate_markers(chunks, [[paren, one, face]]) == [3]


def test_small_groups_pushed_to_the_next_chunk():
    # ComfyUI moves a short weighted group whole to the next chunk, padding the current one
    chunks = [[S, *range(100, 170), E, E, E, E, E, E], [S, 200, 201, 202, E] + [E] * 72]
    assert cp.locate_markers(chunks, [[169], [200, 201]]) == [70, 77 + 2]


def test_markers_that_cannot_be_placed_are_refused():
    chunks = comfy_chunks([1, 2, 3])
    with pytest.raises(cp.FacialPromptError, match="follows no word"):
        cp.locate_markers(chunks, [[1], []])
    with pytest.raises(cp.FacialPromptError, match="not found"):
        cp.locate_markers(chunks, [[9]])
    with pytest.raises(cp.FacialPromptError, match="not found"):   # order matters: no going back
        cp.locate_markers(chunks, [[3], [1]])


# ---------------------------------------------------------------- assembly

def test_caption_appended_only_without_markers():
    tok = WordTokenizer()
    plain = cp.build_facial_prompt("a photo of a woman", "sd15", ALL, tok)
    assert plain.caption_added and not plain.long_form and plain.marker_count == 5
    assert plain.text == ("a photo of a womanDetail:The person has one face <|facial|>, two ears <|facial|>, "
                          "two eyes <|facial|>, one nose <|facial|>, and one mouth <|facial|>,")
    assert plain.marker_regions == ("face", "ear", "eye", "nose", "lip")
    own = cp.build_facial_prompt("a woman, blue eyes <|facial|>, red lips <|facial|>", "sd15", ALL, tok)
    assert not own.caption_added and own.text == "a woman, blue eyes <|facial|>, red lips <|facial|>"
    assert own.clean_text == "a woman, blue eyes , red lips " and own.marker_regions == ("eye", "lip")


def test_short_and_long_assemblies_count_markers_as_tokens():
    tok = WordTokenizer()
    caption = cp.mark_caption(cp.CAPTIONS["sd15"], ALL)
    flips = []
    for n in range(40, 70):
        prompt = " ".join(["w"] * n)
        facial = cp.build_facial_prompt(prompt, "sd15", ALL, tok)
        short_clean = (prompt + "Detail:" + caption).replace(cp.FACIAL_MARKER, "")
        assert facial.long_form == (len(tok(short_clean)) + 5 + 2 > 77)
        if facial.long_form:
            flips.append(len(tok(short_clean)))
            assert facial.text == "Detail:" + caption + " Caption:" + prompt
        else:
            assert facial.text == prompt + "Detail:" + caption
    assert flips and min(flips) + 2 <= 77   # the first long one would have fitted without its markers
    xl = cp.build_facial_prompt("a man", "sdxl", ALL, tok)
    assert xl.text.startswith("a man; Detail:The person") and xl.text.endswith("and a mouth <|facial|>,")
    xl_long = cp.build_facial_prompt(" ".join(["w"] * 70), "sdxl", ALL, tok)
    assert xl_long.long_form and xl_long.text.startswith("; Detail:The person")
    assert xl_long.text.endswith(", and a mouth <|facial|>, Caption:" + " ".join(["w"] * 70))


def test_missing_regions_drop_their_clause_and_marker():
    assert cp.mark_caption(cp.CAPTIONS["sd15"], ["face", "nose"]) == \
        "The person has one face <|facial|>, one nose <|facial|>,"
    assert cp.mark_caption(cp.CAPTIONS["sd15"], []) == ""


def test_pairing_faithful_by_order_and_corrected_by_meaning():
    markers = ("face", "ear", "eye", "nose", "lip")          # the caption's clause order
    assert cp.pair_regions(markers, ALL, "faithful") == ["face", "eye", "ear", "nose", "lip"]
    assert cp.pair_regions(markers, ALL, "corrected") == list(markers)
    # with ears missing the caption has face, eyes, nose, mouth and both policies agree
    four = ("face", "eye", "nose", "lip")
    assert cp.pair_regions(four, four, "faithful") == cp.pair_regions(four, four, "corrected") == list(four)
    # user markers: more markers than regions (faithful) / a region not present (corrected) -> none
    assert cp.pair_regions(("eye", "lip", "face"), ("face", "nose"), "faithful") == ["face", "nose", None]
    assert cp.pair_regions(("eye", "lip", "face"), ("face", "nose"), "corrected") == [None, None, "face"]
    with pytest.raises(cp.FacialPromptError, match="part word"):
        cp.pair_regions(("face", None), ALL, "corrected")


def test_plain_text_before_merge():
    tok = WordTokenizer()
    sd15 = cp.build_facial_prompt("a man", "sd15", ALL, tok)
    xl = cp.build_facial_prompt("a man", "sdxl", ALL, tok)
    assert cp.plain_text("a man", sd15, "sd15") == sd15.clean_text
    assert cp.plain_text("a man", xl, "sdxl") == "a man"


# ---------------------------------------------------------------- parity with the official code

def test_marked_captions_match_the_official_for_every_region_subset(reference):
    for variant, table in reference["marked_captions"].items():
        for subset, official in table.items():
            assert cp.mark_caption(cp.CAPTIONS[variant], [r for r in subset.split(",") if r]) == official


@pytest.fixture(scope="module")
def clip_tokenize():
    if COMFYUI is None:
        pytest.skip("ComfyUI's bundled CLIP tokenizer files are needed")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(f"{COMFYUI}/comfy/sd1_tokenizer")
    return lambda text: tok(text)["input_ids"][1:-1]   # as ComfyUI's SDTokenizer slices it


def test_assembly_ids_and_positions_match_the_official_code(reference, clip_tokenize):
    for case in reference["cases"]:
        variant, present = case["variant"], case["present"]
        facial = cp.build_facial_prompt(case["prompt"], variant, present, clip_tokenize)
        assert facial.text == case["prompt_face"]
        assert facial.clean_text == case["prompt_text_only"]
        assert facial.long_form == case["long_form"]
        content = clip_tokenize(facial.clean_text)
        # markers removed, the ids equal tokenising the marker-free text
        assert sum((clip_tokenize(s) for s in facial.segments), []) == content
        chunks = comfy_chunks(content)
        official = case["clean_input_ids"]
        # the official window is cut at 77 with no end token when too long (REFERENCE 8)
        compare = 77 if len(content) <= 75 else 76
        assert chunks[0][:compare] == official[:compare], case["prompt_face"]
        positions = cp.locate_markers(chunks, cp.marker_anchors(facial, clip_tokenize))
        assert positions == case["facial_positions"], case["prompt_face"]
        assert sum(case["facial_token_idx_mask"]) == len(positions)
        regions = cp.pair_regions(facial.marker_regions, present, "faithful")
        assert regions == case["regions_in_slot_order"][:len(positions)]
        if variant == "sdxl":   # the official second tokenizer sees the literal marker text
            literal = clip_tokenize(facial.text)
            compare = 77 if len(literal) <= 75 else 76
            assert comfy_chunks(literal, pad=0)[0][:compare] == case["clean_input_ids2"][:compare]
            assert case["facial_positions2"] == []
    cases = reference["cases"]
    REPORT.append(f"ConsistentID prompt vs official: {len(cases)} cases ({sum(c['long_form'] for c in cases)} long "
                  "form), texts, ids and marker positions identical")
