"""Label sets of every parser PartID reads, by name.

Parsers that share a dataset still order labels differently (BiSeNet vs SegFormer face parsing),
so everything downstream maps labels by name, never by index.
"""
from __future__ import annotations

# CelebAMask-HQ, BiSeNet / face-parsing.PyTorch order (ConsistentID's face_parsing.pth).
BISENET_FACE = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
                "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")
# Same 19 labels, jonathandinu/face-parsing (SegFormer) order.
SEGFORMER_FACE = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear",
                  "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
# SCHP ATR, also mattmdjaga/segformer_b2_clothes.
ATR = ("Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress", "Belt",
       "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm", "Right-arm", "Bag", "Scarf")
# SCHP LIP.
LIP = ("Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat", "Socks", "Pants",
       "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm", "Left-leg", "Right-leg", "Left-shoe",
       "Right-shoe")

FACE_LABEL_SETS = {"bisenet": BISENET_FACE, "segformer_face": SEGFORMER_FACE}
BODY_LABEL_SETS = {"atr": ATR, "lip": LIP}


def normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def label_set_of(names: list[str] | tuple[str, ...], sets: dict[str, tuple[str, ...]]) -> str | None:
    """Which declared label set `names` is: same order first, else same names in another order; or None."""
    given = [normalise(n) for n in names]
    for key, labels in sets.items():
        if [normalise(n) for n in labels] == given:
            return key
    for key, labels in sets.items():
        if sorted(normalise(n) for n in labels) == sorted(given):
            return key
    return None
