"""A synthetic shop whose ground truth is known: users, a catalog, search requests and graded feedback.

The shop is generated from a hidden state, `ShopTruth`, in five vectorized steps:

1. **Catalog.** A three-level category tree (8 departments x 6 nouns x 4 qualifiers, e.g. ``electronics`` >
   ``headphones`` > ``wireless headphones``), generated brands that specialise in 1-3 departments, items with a
   log-normal price (category median x brand premium x noise), a latent vector (department + noun + leaf
   components + noise), a quality and a long-tailed (Zipf) popularity that leans toward good items.
2. **Users.** Age group and region drive the departments a user likes, their price sensitivity and their
   device, so user attributes carry signal for cold start. Each user has a taste vector, 0-3 loyal brands and a
   long-tailed activity level.
3. **Requests.** Sessions of a few requests spread over ``num_days``; each request has an intent drawn from the
   user's taste (a leaf, a noun, a brand + noun, a brand, a generic deal / gift word, or nothing: browsing) and
   a query text written from it, sometimes with a typo.
4. **Impressions.** About ``list_size`` distinct items per request, drawn from a popularity-weighted mixture of
   the intent leaf / noun / brand, the department, the user's loyal brand and the global bestsellers, then
   ordered by a noisy logging policy.
5. **Feedback.** ``click ~ Bernoulli(sigmoid(relevance + position_bias + click_offset))``, then cart given
   click and purchase given cart; the label is the last stage reached (0 impression ... 3 purchase).

The true relevance logit (`ShopTruth.relevance`) has cross effects a two-tower dot product cannot express: the
query intent against the item's category and brand (conjunctions such as "brand *and* noun match"), a hinge
price penalty above a user-specific comfort price, brand loyalty, and generic queries that change how price and
quality count. The formula is written out in `ShopTruth`.

Example:
    >>> shop = generate_shop(SyntheticConfig(num_users=300, num_items=400, num_interactions=5000, seed=1))
    >>> shop.dataset.summary()["interactions"]
    5000
    >>> top = shop.truth.top_k(np.array([0, 1]), k=5)
    >>> top.item_ids.shape
    (2, 5)
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.schema import ITEM_ID, LABEL, QUERY, REQUEST_ID, TIMESTAMP, USER_ID, Dataset, LabelSpec, Schema

__all__ = [
    "AGE_GROUPS",
    "DEFAULT_WEIGHTS",
    "DEVICES",
    "KIND_BRAND",
    "KIND_BRAND_NOUN",
    "KIND_BROWSE",
    "KIND_DEAL",
    "KIND_GIFT",
    "KIND_LEAF",
    "KIND_NOUN",
    "REGIONS",
    "REQUEST_KINDS",
    "ShopTruth",
    "SyntheticConfig",
    "SyntheticShop",
    "TopK",
    "generate_shop",
    "write_shop",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# Vocabulary. Department -> noun -> four qualifiers; a leaf is "<qualifier> <noun>".
# --------------------------------------------------------------------------------------------------------------
_CATEGORY_TREE: dict[str, dict[str, tuple[str, str, str, str]]] = {
    "electronics": {
        "headphones": ("wireless", "noise cancelling", "over-ear", "kids"),
        "speakers": ("bluetooth", "smart", "portable", "waterproof"),
        "laptops": ("gaming", "ultralight", "business", "convertible"),
        "phones": ("unlocked", "budget", "rugged", "flagship"),
        "cameras": ("mirrorless", "action", "instant", "dslr"),
        "chargers": ("usb-c", "fast", "solar", "travel"),
    },
    "home": {
        "knives": ("chef", "paring", "bread", "steak"),
        "pans": ("nonstick", "cast iron", "stainless", "ceramic"),
        "lamps": ("desk", "floor", "bedside", "reading"),
        "pillows": ("memory foam", "down", "cooling", "lumbar"),
        "towels": ("bath", "beach", "hand", "quick-dry"),
        "blenders": ("countertop", "immersion", "high-speed", "personal"),
    },
    "fashion": {
        "sneakers": ("running", "high-top", "slip-on", "canvas"),
        "jackets": ("denim", "rain", "puffer", "leather"),
        "dresses": ("maxi", "summer", "cocktail", "wrap"),
        "jeans": ("skinny", "straight", "bootcut", "relaxed"),
        "watches": ("analog", "digital", "dive", "chronograph"),
        "bags": ("tote", "crossbody", "laptop", "weekender"),
    },
    "sports": {
        "bikes": ("mountain", "road", "electric", "kids"),
        "tents": ("camping", "backpacking", "family", "pop-up"),
        "dumbbells": ("adjustable", "hex", "neoprene", "rubber"),
        "rackets": ("tennis", "badminton", "squash", "padel"),
        "mats": ("yoga", "exercise", "pilates", "camping"),
        "bottles": ("insulated", "collapsible", "glass", "shaker"),
    },
    "beauty": {
        "shampoo": ("dry", "clarifying", "moisturizing", "anti-dandruff"),
        "lipstick": ("matte", "liquid", "glossy", "long-lasting"),
        "perfume": ("floral", "citrus", "woody", "musk"),
        "moisturizer": ("daily", "night", "tinted", "oil-free"),
        "brushes": ("makeup", "hair", "foundation", "detangling"),
        "razors": ("electric", "safety", "disposable", "cartridge"),
    },
    "toys": {
        "puzzles": ("jigsaw", "3d", "wooden", "floor"),
        "dolls": ("fashion", "baby", "rag", "collectible"),
        "blocks": ("building", "magnetic", "foam", "stacking"),
        "cars": ("remote control", "die-cast", "ride-on", "race"),
        "games": ("board", "card", "party", "strategy"),
        "plushies": ("teddy", "unicorn", "dinosaur", "giant"),
    },
    "grocery": {
        "coffee": ("espresso", "decaf", "instant", "cold brew"),
        "tea": ("green", "herbal", "black", "chai"),
        "chocolate": ("dark", "milk", "white", "hazelnut"),
        "pasta": ("whole wheat", "gluten-free", "fresh", "organic"),
        "snacks": ("protein", "vegan", "salty", "keto"),
        "oil": ("olive", "coconut", "avocado", "sesame"),
    },
    "books": {
        "novels": ("mystery", "romance", "fantasy", "sci-fi"),
        "cookbooks": ("vegan", "baking", "grilling", "quick"),
        "comics": ("superhero", "manga", "graphic", "vintage"),
        "biographies": ("sports", "political", "music", "business"),
        "guides": ("travel", "study", "hiking", "gardening"),
        "storybooks": ("bedtime", "animal", "counting", "alphabet"),
    },
}
# Median price of a typical item of each department (the leaf medians scatter around it).
_DEPARTMENT_PRICE = {
    "electronics": 120.0,
    "home": 35.0,
    "fashion": 45.0,
    "sports": 40.0,
    "beauty": 18.0,
    "toys": 22.0,
    "grocery": 8.0,
    "books": 14.0,
}
# Two attribute words per title, from department-specific lists of equal length.
_TITLE_ATTRIBUTES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "electronics": (
        ("black", "white", "silver", "graphite", "blue"),
        ("compact", "pro", "2024 edition", "bundle", "lite"),
    ),
    "home": (("white", "grey", "sage", "walnut", "charcoal"), ("set of 2", "large", "small", "classic", "premium")),
    "fashion": (("black", "navy", "olive", "beige", "red"), ("slim fit", "oversized", "cotton", "recycled", "classic")),
    "sports": (
        ("black", "orange", "green", "blue", "grey"),
        ("lightweight", "pro", "beginner", "heavy duty", "compact"),
    ),
    "beauty": (("rose", "nude", "coral", "berry", "clear"), ("travel size", "50ml", "100ml", "vegan", "sensitive")),
    "toys": (("red", "rainbow", "blue", "pink", "yellow"), ("ages 3+", "ages 6+", "deluxe", "mini", "family pack")),
    "grocery": (
        ("organic", "fair trade", "family size", "value pack", "classic"),
        ("250g", "500g", "1kg", "12-pack", "6-pack"),
    ),
    "books": (
        ("paperback", "hardcover", "illustrated", "large print", "boxed set"),
        ("2nd edition", "bestseller", "new release", "classic", "signed"),
    ),
}
_BRAND_ONSETS = (
    "Zen", "Vel", "Kor", "Lum", "Ar", "Bri", "Cal", "Dor", "Ev", "Fen", "Gal", "Hal", "Ist", "Jor", "Kal",
    "Mer", "Nov", "Or", "Pax", "Quin", "Ral", "Sol", "Tor", "Ul", "Vor", "Wyn", "Xan", "Yel", "Zor", "Mon",
)  # fmt: skip
_BRAND_MIDDLES = ("", "a", "i", "o", "el", "an", "er", "u")
_BRAND_ENDINGS = (
    "trix", "ora", "ex", "ico", "ano", "ium", "elle", "ix", "on", "ara", "ent", "ova", "is", "ux", "ly", "ta",
    "ro", "mo",
)  # fmt: skip
_DEAL_WORDS = ("sale", "cheap", "best deals", "discount", "clearance")
_GIFT_WORDS = ("gift", "gift ideas", "top rated", "bestsellers", "present for her")

AGE_GROUPS = ("18-24", "25-34", "35-44", "45-54", "55+")
REGIONS = ("north", "south", "east", "west", "central")
DEVICES = ("mobile", "desktop", "app")
_AGE_PROBABILITIES = (0.15, 0.28, 0.24, 0.18, 0.15)
_REGION_PROBABILITIES = (0.22, 0.20, 0.18, 0.25, 0.15)
# How much each age group likes each department (log-odds, columns in `_CATEGORY_TREE` order).
_AGE_DEPARTMENT_AFFINITY = np.array(
    [
        # elec  home  fash  sport beauty toys  groc  books
        [1.2, -0.8, 1.0, 0.4, 0.6, -0.4, -0.6, -0.2],  # 18-24
        [0.8, 0.2, 0.6, 0.6, 0.3, 0.2, 0.0, -0.2],  # 25-34
        [0.3, 0.8, 0.0, 0.2, 0.0, 1.0, 0.5, 0.0],  # 35-44
        [0.0, 0.9, -0.2, 0.0, 0.2, 0.3, 0.7, 0.5],  # 45-54
        [-0.5, 0.6, -0.4, -0.4, 0.2, 0.4, 0.8, 1.2],  # 55+
    ]
)
# Thrift (higher: more price sensitive, lower comfort price) by age group and by region.
_AGE_THRIFT = np.array([0.8, 0.3, -0.2, -0.4, 0.1])
_REGION_THRIFT = np.array([-0.2, 0.3, -0.1, 0.1, 0.2])
# Preferred device by age group (columns in `DEVICES` order).
_AGE_DEVICE_PROBABILITIES = np.array(
    [[0.45, 0.10, 0.45], [0.45, 0.20, 0.35], [0.40, 0.30, 0.30], [0.35, 0.45, 0.20], [0.30, 0.55, 0.15]]
)
# Relative traffic by hour of day (UTC) for each device: phones in the evening, desktops in office hours.
_HOUR_WEIGHTS = np.array(
    [
        [2, 1, 1, 1, 1, 1, 2, 3, 4, 4, 4, 5, 6, 5, 5, 5, 6, 7, 8, 9, 10, 10, 8, 4],  # mobile
        [1, 1, 1, 1, 1, 1, 1, 2, 5, 8, 9, 9, 8, 8, 9, 9, 8, 6, 4, 3, 3, 2, 2, 1],  # desktop
        [2, 1, 1, 1, 1, 1, 2, 3, 3, 3, 3, 4, 5, 4, 4, 4, 5, 6, 8, 10, 11, 11, 9, 5],  # app
    ],
    dtype=np.float64,
)
# Position bias: logit offset -eta * log(1 + position), steeper on small screens.
_POSITION_BIAS_SLOPE = np.array([0.9, 0.5, 0.7])
_DEVICE_PURCHASE_OFFSET = np.array([-0.2, 0.0, 0.3])

# Request kinds (`ShopTruth.request_kind`).
KIND_BROWSE, KIND_DEAL, KIND_GIFT, KIND_LEAF, KIND_NOUN, KIND_BRAND_NOUN, KIND_BRAND = range(7)
REQUEST_KINDS = ("browse", "deal", "gift", "leaf", "noun", "brand_noun", "brand")

# Each request kind's mixture over the candidate sources (the columns of `_draw_shown`'s `source_group`).
_SOURCE_MIX = np.array(
    [
        # leaf noun brand b+n  dept  global loyal
        [0.00, 0.00, 0.00, 0.00, 0.55, 0.25, 0.20],  # browse
        [0.00, 0.00, 0.00, 0.00, 0.40, 0.50, 0.10],  # deal
        [0.00, 0.00, 0.00, 0.00, 0.40, 0.50, 0.10],  # gift
        [0.50, 0.20, 0.00, 0.00, 0.15, 0.10, 0.05],  # leaf
        [0.00, 0.65, 0.00, 0.00, 0.15, 0.15, 0.05],  # noun
        [0.00, 0.25, 0.15, 0.45, 0.05, 0.10, 0.00],  # brand + noun
        [0.00, 0.00, 0.70, 0.00, 0.10, 0.20, 0.00],  # brand
    ]
)

# Coefficients of the true relevance logit and of the feedback model (see `ShopTruth`).
DEFAULT_WEIGHTS: dict[str, float] = {
    "taste": 2.5,
    "popularity": 1.5,
    "gift_quality": 0.5,
    "deal_price": 1.0,
    "deal_linear": 0.5,
    "leaf_match": 3.0,
    "sibling_leaf": 1.5,
    "noun_match": 2.5,
    "same_department": -1.0,
    "other_department": -3.0,
    "brand_match": 1.5,
    "brand_wrong_noun": -0.5,
    "brand_only_match": 2.5,
    "brand_mismatch": -2.5,
    "click_offset": -4.5,
    "cart_offset": -2.8,
    "cart_slope": 0.4,
    "purchase_offset": -2.0,
    "purchase_slope": 0.3,
    "purchase_price": 1.0,
}

_LATENT_DEPARTMENT_SCALE, _LATENT_NOUN_SCALE, _LATENT_LEAF_SCALE, _LATENT_ITEM_NOISE = 1.0, 0.7, 0.45, 0.35
_MISSPELLINGS_PER_WORD = 3
_MEAN_EXTRA_REQUESTS_PER_SESSION = 1.0
_MEAN_SECONDS_BETWEEN_REQUESTS = 90.0
_EXPLORE_PROBABILITY = 0.2  # a session in a random department rather than one the user likes
_LOYAL_BRAND_QUERY_PROBABILITY = 0.5  # a brand query names one of the user's loyal brands
_CANDIDATES_PER_SLOT = 2  # candidates drawn per shown slot before removing duplicates
_REQUESTS_PER_CHUNK = 65_536  # fixed, so the tables do not depend on memory settings
_MAX_FILL_ROUNDS = 200
_ITEM_TILE = 1 << 16  # items per scoring tile: their attributes stay in cache while many requests are scored
_TRUTH_FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------------------------------------------
def _max_brand_names() -> int:
    return len(_brand_name_pool())


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and knobs of the synthetic shop. The defaults make a quick demo.

    Attributes:
        num_users: Users in the user table (some never visit: cold users).
        num_items: Items in the catalog; at least 8 (one per department) and at least ``list_size``.
        num_interactions: Target number of interaction rows (impressions). The shop has
            ``ceil(num_interactions / list_size)`` requests of exactly ``list_size`` rows each.
        list_size: Items shown per request.
        seed: Seed of every random draw; the same config gives bit-identical tables.
        num_brands: Brands in the catalog, or ``None`` for ``clip(num_items // 40, 12, 2000)``.
        latent_dim: Dimension of the hidden taste and item vectors.
        num_days: Days the sessions are spread over.
        start_time: Unix seconds of midnight (UTC) of the first day.
        browse_fraction: Fraction of requests without query text (browsing / recommendation).
        generic_fraction: Fraction of requests with a generic query ("sale", "gift ideas", ...).
        brand_query_fraction: Fraction of the remaining (intent) queries that name a brand.
        misspell_fraction: Fraction of leaf and noun queries with a typo (a dropped or swapped letter).
        popularity_exponent: Zipf exponent of item popularity (0: uniform; 1: a long tail).
        logging_policy_strength: How strongly the logging policy orders a list by true relevance (0: random
            order; the policy adds Gumbel noise to ``strength * relevance``).

    Example:
        >>> SyntheticConfig(num_items=200, num_interactions=2000).num_requests
        200
    """

    num_users: int = 2000
    num_items: int = 1000
    num_interactions: int = 100_000
    list_size: int = 10
    seed: int = 0
    num_brands: int | None = None
    latent_dim: int = 16
    num_days: int = 90
    start_time: int = 1_704_067_200
    browse_fraction: float = 0.25
    generic_fraction: float = 0.05
    brand_query_fraction: float = 0.2
    misspell_fraction: float = 0.08
    popularity_exponent: float = 1.0
    logging_policy_strength: float = 0.3

    def __post_init__(self) -> None:
        _check_int("num_users", self.num_users, 1)
        _check_int("list_size", self.list_size, 1)
        _check_int("num_items", self.num_items, max(len(_CATEGORY_TREE), self.list_size), "max(8, list_size)")
        _check_int("num_interactions", self.num_interactions, 1)
        _check_int("seed", self.seed, 0)
        if self.num_brands is not None:
            _check_int("num_brands", self.num_brands, len(_CATEGORY_TREE))
            if self.num_brands > _max_brand_names():
                raise ValueError(
                    f"`num_brands` should be at most {_max_brand_names()} (distinct generated names). "
                    f"Received: num_brands={self.num_brands}"
                )
        _check_int("latent_dim", self.latent_dim, 1)
        _check_int("num_days", self.num_days, 1)
        _check_int("start_time", self.start_time, 0)
        if self.start_time % 86_400:
            raise ValueError(
                "`start_time` should be a midnight UTC (a multiple of 86400 seconds). "
                f"Received: start_time={self.start_time}"
            )
        for name in ("browse_fraction", "generic_fraction", "brand_query_fraction", "misspell_fraction"):
            _check_float(name, getattr(self, name), 0.0, 1.0)
        if self.browse_fraction + self.generic_fraction > 1.0:
            raise ValueError(
                "`browse_fraction + generic_fraction` should be at most 1. Received: "
                f"browse_fraction={self.browse_fraction}, generic_fraction={self.generic_fraction}"
            )
        _check_float("popularity_exponent", self.popularity_exponent, 0.0, 10.0)
        _check_float("logging_policy_strength", self.logging_policy_strength, 0.0, 100.0)

    @property
    def num_requests(self) -> int:
        """Requests in the shop: ``ceil(num_interactions / list_size)``."""
        return -(-self.num_interactions // self.list_size)

    @property
    def resolved_num_brands(self) -> int:
        """``num_brands``, or its default for ``num_items`` when it is ``None``."""
        if self.num_brands is not None:
            return self.num_brands
        return int(np.clip(self.num_items // 40, 12, 2000))

    def to_dict(self) -> dict[str, int | float]:
        """The fields, with ``num_brands`` resolved (so the dict reproduces the same shop)."""
        values = {"seed": self.seed, **{f.name: getattr(self, f.name) for f in fields(self)}}
        values["num_brands"] = self.resolved_num_brands
        return values


def _check_int(name: str, value: object, minimum: int, minimum_text: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        if minimum_text:
            expected = f"an integer >= {minimum_text}={minimum}"
        else:
            expected = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ValueError(f"`{name}` should be {expected}. Received: {name}={value!r}")


def _check_float(name: str, value: object, low: float, high: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.integer | np.floating)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ValueError(f"`{name}` should be a number in [{low}, {high}]. Received: {name}={value!r}")


# --------------------------------------------------------------------------------------------------------------
# The hidden state.
# --------------------------------------------------------------------------------------------------------------
class TopK(NamedTuple):
    """The truly best items of each request.

    Attributes:
        item_ids: ``[num_requests, k]`` int64 item ids, best first.
        scores: ``[num_requests, k]`` float32 true relevance logits, descending.
    """

    item_ids: np.ndarray
    scores: np.ndarray


@dataclass(eq=False)
class ShopTruth:
    """The generative state of a synthetic shop: what a perfect model would know.

    Ids are positions: item ``i`` is row ``i`` of the items table (``item_id == i``), user ``u`` has
    ``user_id == u`` and request ``r`` has ``request_id == r``. Missing entries (no leaf intent, no loyal brand)
    are ``-1``.

    The true relevance logit of item ``i`` for request ``r`` of user ``u`` is (``w`` = `weights`)::

        rel(r, i) = w.taste * <user_taste[u], item_vector[i]>
                  + item_quality[i] * (1 + w.gift_quality * [kind_r == gift])
                  + w.popularity * popularity_feature[i]
                  - user_price_sensitivity[u] * (1 + w.deal_price * [kind_r == deal])
                        * max(0, item_price_ratio[i] - user_price_comfort[u])
                  - w.deal_linear * [kind_r == deal] * item_price_ratio[i]
                  + sum_k user_loyalty[u, k] * [item_brand[i] == user_loyal_brands[u, k]]
                  + category(r, i) + brand(r, i)

    where ``popularity_feature`` is ``log(item_popularity)`` rescaled to [0, 1] over the catalog (tail 0, best
    seller 1), ``item_price_ratio = log(price / leaf median price)``, and for requests with a noun intent ``N``
    (leaf intents ``L`` have one too) ``category`` is ``w.leaf_match`` (same leaf as ``L``),
    ``w.sibling_leaf`` (same noun, other leaf), ``w.noun_match`` (same noun, noun-only intent),
    ``w.same_department`` or ``w.other_department``; for requests with a brand intent ``B``, ``brand`` is
    ``w.brand_match`` (brand and noun match), ``w.brand_wrong_noun`` (brand matches, noun does not),
    ``w.brand_only_match`` (brand-only intent, brand matches) or ``w.brand_mismatch`` (another brand). Both are 0
    without that intent (browse, deal and gift requests).

    Feedback at (0-based) ``position`` of a list shown on ``device``::

        click    ~ Bernoulli(sigmoid(rel + position_bias[device, position] + w.click_offset))
        cart     ~ click * Bernoulli(sigmoid(w.cart_offset + w.cart_slope * rel))
        purchase ~ cart * Bernoulli(sigmoid(w.purchase_offset + w.purchase_slope * rel
                       - w.purchase_price * user_price_sensitivity[u] * max(0, item_price_ratio[i] - comfort[u])
                       + device_purchase_offset[device]))

    Attributes:
        departments: ``[num_departments]`` department names (``category_l1``).
        nouns: ``[num_nouns]`` noun names (``category_l2``).
        leaves: ``[num_leaves]`` leaf names (``category_leaf``).
        brands: ``[num_brands]`` brand names.
        noun_department: ``[num_nouns]`` int32 department of each noun.
        leaf_noun: ``[num_leaves]`` int32 noun of each leaf.
        leaf_median_price: ``[num_leaves]`` float32 typical (median) price of each leaf, the reference of the
            price hinge.
        item_leaf: ``[num_items]`` int32.
        item_brand: ``[num_items]`` int32.
        item_vector: ``[num_items, latent_dim]`` float32 unit latent vectors.
        item_quality: ``[num_items]`` float32.
        item_popularity: ``[num_items]`` float64 popularity (sums to 1; Zipf over a quality-leaning ranking).
        item_price_ratio: ``[num_items]`` float32 ``log(price / leaf_median_price[leaf])``.
        user_taste: ``[num_users, latent_dim]`` float32 unit taste vectors.
        user_departments: ``[num_users, 3]`` int32 preferred departments, ``-1`` padded.
        user_department_weights: ``[num_users, 3]`` float32 mixture weights of those departments.
        user_price_sensitivity: ``[num_users]`` float32 slope of the price hinge.
        user_price_comfort: ``[num_users]`` float32 log price ratio above which the hinge starts.
        user_loyal_brands: ``[num_users, 3]`` int32 loyal brands, ``-1`` padded.
        user_loyalty: ``[num_users, 3]`` float32 loyalty strengths (0 where padded).
        user_activity: ``[num_users]`` float32 relative activity (long tail).
        request_user: ``[num_requests]`` int64.
        request_kind: ``[num_requests]`` int8, an index into `REQUEST_KINDS`.
        request_department: ``[num_requests]`` int32 department the request's session is about.
        request_leaf: ``[num_requests]`` int32 leaf intent or ``-1``.
        request_noun: ``[num_requests]`` int32 noun intent (also set for leaf intents) or ``-1``.
        request_brand: ``[num_requests]`` int32 brand intent or ``-1``.
        request_misspelled: ``[num_requests]`` bool, whether the query text has a typo.
        request_device: ``[num_requests]`` int8, an index into `DEVICES`.
        position_bias: ``[num_devices, list_size]`` float32 click logit offset of each position.
        device_purchase_offset: ``[num_devices]`` float32 purchase logit offset of each device.
        weights: The coefficients of the formulas above (`DEFAULT_WEIGHTS`).

    Example:
        >>> truth = generate_shop(SyntheticConfig(num_items=300, num_interactions=3000)).truth
        >>> truth.relevance(np.array([0, 1, 2])).shape
        (3, 300)
    """

    departments: list[str]
    nouns: list[str]
    leaves: list[str]
    brands: list[str]
    noun_department: np.ndarray
    leaf_noun: np.ndarray
    leaf_median_price: np.ndarray
    item_leaf: np.ndarray
    item_brand: np.ndarray
    item_vector: np.ndarray
    item_quality: np.ndarray
    item_popularity: np.ndarray
    item_price_ratio: np.ndarray
    user_taste: np.ndarray
    user_departments: np.ndarray
    user_department_weights: np.ndarray
    user_price_sensitivity: np.ndarray
    user_price_comfort: np.ndarray
    user_loyal_brands: np.ndarray
    user_loyalty: np.ndarray
    user_activity: np.ndarray
    request_user: np.ndarray
    request_kind: np.ndarray
    request_department: np.ndarray
    request_leaf: np.ndarray
    request_noun: np.ndarray
    request_brand: np.ndarray
    request_misspelled: np.ndarray
    request_device: np.ndarray
    position_bias: np.ndarray
    device_purchase_offset: np.ndarray
    weights: dict[str, float]

    _VOCABULARY: ClassVar[tuple[str, ...]] = ("departments", "nouns", "leaves", "brands")
    # Arrays that must agree in length with a reference (a vocabulary list or the first array of a table).
    _ALIGNED: ClassVar[dict[str, tuple[str, ...]]] = {
        "nouns": ("noun_department",),
        "leaves": ("leaf_noun", "leaf_median_price"),
        "item_leaf": ("item_brand", "item_vector", "item_quality", "item_popularity", "item_price_ratio"),
        "user_taste": (
            "user_departments",
            "user_department_weights",
            "user_price_sensitivity",
            "user_price_comfort",
            "user_loyal_brands",
            "user_loyalty",
            "user_activity",
        ),
        "request_user": (
            "request_kind",
            "request_department",
            "request_leaf",
            "request_noun",
            "request_brand",
            "request_misspelled",
            "request_device",
        ),
        "device_purchase_offset": ("position_bias",),
    }

    def __post_init__(self) -> None:
        for name in self._VOCABULARY:
            setattr(self, name, [str(value) for value in getattr(self, name)])
        for reference, names in self._ALIGNED.items():
            expected = len(getattr(self, reference))
            where = f"`{reference}`" if reference in self._VOCABULARY else f"`{reference}` ({reference}.npy)"
            for name in names:
                rows = len(getattr(self, name))
                if rows != expected:
                    raise ValueError(
                        f"`{name}` ({name}.npy) has {rows} rows but {where} has {expected}: "
                        "the arrays come from different shops"
                    )
        if self.item_vector.shape[1:] != self.user_taste.shape[1:]:
            raise ValueError(
                f"`item_vector` has latent dimension {self.item_vector.shape[1:]} but `user_taste` has "
                f"{self.user_taste.shape[1:]}: the arrays come from different shops"
            )
        missing = sorted(set(DEFAULT_WEIGHTS) - set(self.weights))
        if missing:
            raise ValueError(f"`weights` should hold every key of DEFAULT_WEIGHTS. Missing: {missing}")
        self.weights = {key: float(value) for key, value in self.weights.items()}
        self._weights32 = {key: np.float32(value) for key, value in self.weights.items()}
        self._item_noun = self.leaf_noun[self.item_leaf]
        self._item_department = self.noun_department[self._item_noun]
        # Log popularity rescaled to [0, 1] over the catalog's range, so its weight means the same at any size.
        log_popularity = np.log(self.item_popularity)
        spread = float(log_popularity.max() - log_popularity.min()) if self.num_items else 0.0
        self._item_log_popularity = (
            ((log_popularity - log_popularity.min()) / spread).astype(np.float32)
            if spread > 0
            else np.zeros(self.num_items, np.float32)
        )

    @property
    def num_items(self) -> int:
        return len(self.item_leaf)

    @property
    def num_users(self) -> int:
        return len(self.user_taste)

    @property
    def num_requests(self) -> int:
        return len(self.request_user)

    @property
    def item_noun(self) -> np.ndarray:
        """``[num_items]`` int32 noun of each item."""
        return self._item_noun

    @property
    def item_department(self) -> np.ndarray:
        """``[num_items]`` int32 department of each item."""
        return self._item_department

    def relevance(
        self, request_ids: np.ndarray, item_ids: np.ndarray | None = None, *, batch_size: int = 1 << 22
    ) -> np.ndarray:
        """The true relevance logit of items for requests.

        Args:
            request_ids: ``[num_queries]`` request ids.
            item_ids: ``[num_candidates]`` item ids scored for every request, ``[num_queries, num_candidates]``
                one candidate list per request, or ``None`` for the whole catalog in items-table order.
            batch_size: Most request-item pairs scored at once; the temporaries of one batch take about
                ``40 * batch_size`` bytes.

        Returns:
            ``[num_queries, num_candidates]`` float32 logits (the caller holds the whole matrix; use `top_k` for
            large catalogs).
        """
        requests = self._check_ids("request_ids", request_ids, self.num_requests)
        items = None if item_ids is None else self._check_ids("item_ids", item_ids, self.num_items, max_ndim=2)
        if items is not None and items.ndim == 2 and len(items) != len(requests):
            raise ValueError(
                f"`item_ids` should have one row per request ({len(requests)}) when 2-D. Received: {items.shape}"
            )
        _check_int("batch_size", batch_size, 1)
        num_candidates = self.num_items if items is None else items.shape[-1]
        out = np.empty((len(requests), num_candidates), np.float32)
        items_per_batch = max(1, min(num_candidates, batch_size, _ITEM_TILE))
        requests_per_batch = max(1, batch_size // items_per_batch)
        for q in range(0, len(requests), requests_per_batch):
            rows = slice(q, q + requests_per_batch)
            for i in range(0, num_candidates, items_per_batch):
                columns = slice(i, i + items_per_batch)
                if items is None:
                    batch = columns
                elif items.ndim == 1:
                    batch = items[columns]
                else:
                    batch = items[rows, columns]
                out[rows, columns] = self._score(requests[rows], batch)
        return out

    def top_k(self, request_ids: np.ndarray, k: int, *, batch_size: int = 1 << 22) -> TopK:
        """The ``k`` truly best items of each request, scanning the catalog in batches.

        Args:
            request_ids: ``[num_queries]`` request ids.
            k: Items per request; at most the catalog size.
            batch_size: Most request-item pairs scored at once (see `relevance`).

        Returns:
            `TopK` with ``[num_queries, k]`` item ids and scores, by descending score, equal scores by item id.
        """
        requests = self._check_ids("request_ids", request_ids, self.num_requests)
        _check_int("k", k, 1)
        if k > self.num_items:
            raise ValueError(f"`k` should be at most the catalog size {self.num_items}. Received: k={k}")
        _check_int("batch_size", batch_size, 1)
        items_per_batch = min(self.num_items, max(min(batch_size, _ITEM_TILE), k))
        requests_per_batch = max(1, batch_size // items_per_batch)
        best_ids = np.empty((len(requests), k), np.int64)
        best_scores = np.empty((len(requests), k), np.float32)
        for q in range(0, len(requests), requests_per_batch):
            chunk = requests[q : q + requests_per_batch]
            ids = np.empty((len(chunk), 0), np.int64)
            scores = np.empty((len(chunk), 0), np.float32)
            for start in range(0, self.num_items, items_per_batch):
                stop = min(start + items_per_batch, self.num_items)
                batch_scores = self._score(chunk, slice(start, stop))
                keep = min(k, stop - start)
                part = np.argpartition(-batch_scores, keep - 1, axis=1)[:, :keep]
                ids = np.concatenate([ids, start + part], axis=1)
                scores = np.concatenate([scores, np.take_along_axis(batch_scores, part, axis=1)], axis=1)
                order = np.lexsort((ids, -scores), axis=-1)[:, :k]
                ids = np.take_along_axis(ids, order, axis=1)
                scores = np.take_along_axis(scores, order, axis=1)
            best_ids[q : q + len(chunk)] = ids
            best_scores[q : q + len(chunk)] = scores
        return TopK(item_ids=best_ids, scores=best_scores)

    def save(self, directory: str | Path) -> Path:
        """Writes one ``.npy`` per array and ``truth.json`` (names, weights, counts) into ``directory``.

        Returns:
            The directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = self._array_fields()
        for name in arrays:
            np.save(directory / f"{name}.npy", getattr(self, name), allow_pickle=False)
        meta = {
            "format_version": _TRUTH_FORMAT_VERSION,
            "arrays": arrays,
            "weights": self.weights,
            **{name: getattr(self, name) for name in self._VOCABULARY},
            "counts": {"items": self.num_items, "users": self.num_users, "requests": self.num_requests},
        }
        (directory / "truth.json").write_text(json.dumps(meta, indent=1) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ShopTruth:
        """Reads a directory written by `save`; checks that every array is present and the counts agree."""
        directory = Path(directory)
        meta_path = directory / "truth.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} does not exist: {directory} is not a saved ShopTruth")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != _TRUTH_FORMAT_VERSION:
            raise ValueError(
                f"{meta_path} has format_version={meta.get('format_version')!r}; this code reads version "
                f"{_TRUTH_FORMAT_VERSION}"
            )
        expected = set(cls._array_fields())
        if set(meta["arrays"]) != expected:
            raise ValueError(
                f"{meta_path} lists arrays {sorted(meta['arrays'])} but a ShopTruth has {sorted(expected)}"
            )
        values: dict[str, object] = {name: meta[name] for name in cls._VOCABULARY}
        for name in meta["arrays"]:
            path = directory / f"{name}.npy"
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist: the truth directory is incomplete")
            values[name] = np.load(path, allow_pickle=False)
        truth = cls(**values, weights=meta["weights"])
        counts = {"items": truth.num_items, "users": truth.num_users, "requests": truth.num_requests}
        if counts != meta["counts"]:
            raise ValueError(f"{meta_path} records counts {meta['counts']} but the arrays hold {counts}")
        return truth

    @classmethod
    def _array_fields(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name not in (*cls._VOCABULARY, "weights")]

    @staticmethod
    def _check_ids(name: str, ids: np.ndarray, size: int, *, max_ndim: int = 1) -> np.ndarray:
        ids = np.asarray(ids)
        if not 1 <= ids.ndim <= max_ndim or (ids.size and ids.dtype.kind not in "iu"):
            shape = "a 1-D" if max_ndim == 1 else "a 1-D or 2-D"
            raise ValueError(
                f"`{name}` should be {shape} array of integer ids. Received: shape={ids.shape}, dtype={ids.dtype}"
            )
        ids = ids.astype(np.int64, copy=False)
        if ids.size and (ids.min() < 0 or ids.max() >= size):
            raise ValueError(f"`{name}` should lie in [0, {size}). Received: min={ids.min()}, max={ids.max()}")
        return ids

    def _score(self, request_index: np.ndarray, item_index: np.ndarray | slice) -> np.ndarray:
        """The relevance kernel shared by generation and evaluation.

        Args:
            request_index: ``[Q]`` request positions.
            item_index: ``[M]`` item positions (or a slice of them) scored for every request, or ``[Q, M]`` one
                list per request.

        Returns:
            ``[Q, M]`` float32 logits.
        """
        w = self._weights32
        users = self.request_user[request_index]
        shared = isinstance(item_index, slice) or item_index.ndim == 1

        def item(values: np.ndarray) -> np.ndarray:
            picked = values[item_index]
            return picked[None] if shared else picked

        if shared:
            taste = self.user_taste[users] @ self.item_vector[item_index].T
        else:
            taste = np.einsum("qd,qmd->qm", self.user_taste[users], self.item_vector[item_index])
        kind = self.request_kind[request_index][:, None]
        deal = kind == KIND_DEAL
        score = w["taste"] * taste
        score += item(self.item_quality) * np.where(kind == KIND_GIFT, 1 + w["gift_quality"], np.float32(1))
        score += w["popularity"] * item(self._item_log_popularity)

        ratio = item(self.item_price_ratio)
        sensitivity = self.user_price_sensitivity[users][:, None] * np.where(deal, 1 + w["deal_price"], 1)
        score -= sensitivity * np.maximum(ratio - self.user_price_comfort[users][:, None], 0)
        if deal.any():
            score -= np.where(deal, w["deal_linear"], 0) * ratio

        # Terms that depend on the item only through its leaf or its brand. Scoring a shared item list, they are
        # evaluated once per leaf / brand and gathered; scoring one list per request, directly per item.
        noun_intent = self.request_noun[request_index]
        brand_intent = self.request_brand[request_index]
        if (noun_intent >= 0).any():
            if shared:
                table = self._leaf_terms(request_index, np.arange(len(self.leaves))[None, :])
                score += np.take(table, item(self.item_leaf)[0], axis=1)
            else:
                score += self._leaf_terms(request_index, item(self.item_leaf))
        if (brand_intent >= 0).any() or (self.user_loyal_brands[users] >= 0).any():
            if shared:
                table = self._brand_terms(request_index, np.arange(len(self.brands))[None, :])
                score += np.take(table, item(self.item_brand)[0], axis=1)
            else:
                score += self._brand_terms(request_index, item(self.item_brand))
        # The conjunction "brand and noun both match" (a brand + noun query).
        both = np.flatnonzero((brand_intent >= 0) & (noun_intent >= 0))
        if both.size:
            brand, noun = item(self.item_brand), item(self._item_noun)
            if not shared:
                brand, noun = brand[both], noun[both]
            hit = (brand == brand_intent[both, None]) & (noun == noun_intent[both, None])
            score[both] += (w["brand_match"] - w["brand_wrong_noun"]) * hit
        return score.astype(np.float32, copy=False)

    def _leaf_terms(self, request_index: np.ndarray, leaf: np.ndarray) -> np.ndarray:
        """``category(r, i)`` for items of leaf ``leaf`` (``[1, M]`` or ``[Q, M]``): ``[Q, M]`` float32."""
        w = self._weights32
        noun_intent = self.request_noun[request_index][:, None]
        leaf_intent = self.request_leaf[request_index][:, None]
        noun = self.leaf_noun[leaf]
        category = np.where(
            noun == noun_intent,
            np.where(
                leaf_intent >= 0, np.where(leaf == leaf_intent, w["leaf_match"], w["sibling_leaf"]), w["noun_match"]
            ),
            np.where(
                self.noun_department[noun] == self.noun_department[np.maximum(noun_intent, 0)],
                w["same_department"],
                w["other_department"],
            ),
        )
        return np.where(noun_intent >= 0, category, np.float32(0))

    def _brand_terms(self, request_index: np.ndarray, brand: np.ndarray) -> np.ndarray:
        """Loyalty plus ``brand(r, i)`` short of the brand-and-noun conjunction, for items of brand ``brand``."""
        w = self._weights32
        users = self.request_user[request_index]
        brand_intent = self.request_brand[request_index][:, None]
        has_noun = self.request_noun[request_index][:, None] >= 0
        terms = np.where(
            brand == brand_intent,
            np.where(has_noun, w["brand_wrong_noun"], w["brand_only_match"]),
            w["brand_mismatch"],
        )
        terms = np.where(brand_intent >= 0, terms, np.float32(0))
        for slot in range(self.user_loyal_brands.shape[1]):
            loyal = self.user_loyal_brands[users, slot][:, None]
            terms += self.user_loyalty[users, slot][:, None] * (brand == loyal)
        return terms


@dataclass
class SyntheticShop:
    """A generated shop: the public tables, the hidden state that produced them, and the config.

    Attributes:
        dataset: The public tables, exactly what a user would load.
        truth: The hidden generative state (`ShopTruth`).
        config: The config that generated both.
    """

    dataset: Dataset
    truth: ShopTruth
    config: SyntheticConfig


_SCHEMA = Schema(
    label=LabelSpec(
        kind="graded", min=0, max=3, positive_threshold=1, names={0: "impression", 1: "click", 2: "cart", 3: "purchase"}
    ),
    has_query=True,
    has_request_id=True,
    context=("device", "hour"),
    item_categorical=("category_l1", "category_l2", "category_leaf", "brand"),
    item_numeric=("price",),
    item_text=("title",),
    user_categorical=("age_group", "region"),
    user_numeric=("tenure_days",),
)


# --------------------------------------------------------------------------------------------------------------
# Generation.
# --------------------------------------------------------------------------------------------------------------
def generate_shop(config: SyntheticConfig | None = None) -> SyntheticShop:
    """Generates a synthetic shop, deterministically from ``config.seed``.

    Args:
        config: Sizes and knobs; `SyntheticConfig()` when ``None``.

    Returns:
        The public `Dataset` (interactions sorted by timestamp, each request's rows in display order), the hidden
        `ShopTruth` and the config.
    """
    config = SyntheticConfig() if config is None else config
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"`config` should be a SyntheticConfig. Received: {type(config).__name__}")
    started = time.perf_counter()
    catalog_seed, users_seed, requests_seed, impressions_seed = np.random.SeedSequence(config.seed).spawn(4)

    catalog = _make_catalog(config, np.random.default_rng(catalog_seed))
    users = _make_users(config, catalog, np.random.default_rng(users_seed))
    pools = _ItemPools(catalog)
    requests = _make_requests(config, catalog, users, pools, np.random.default_rng(requests_seed))
    logger.info("catalog, users and %d requests in %.2fs", config.num_requests, time.perf_counter() - started)

    list_size = config.list_size
    positions = np.log1p(np.arange(list_size))
    truth = ShopTruth(
        departments=catalog.departments,
        nouns=catalog.nouns,
        leaves=catalog.leaves,
        brands=catalog.brands,
        noun_department=catalog.noun_department,
        leaf_noun=catalog.leaf_noun,
        leaf_median_price=catalog.leaf_median_price,
        item_leaf=catalog.item_leaf,
        item_brand=catalog.item_brand,
        item_vector=catalog.item_vector,
        item_quality=catalog.item_quality,
        item_popularity=catalog.item_popularity,
        item_price_ratio=catalog.item_price_ratio,
        **users.truth,
        **requests.truth,
        position_bias=(-_POSITION_BIAS_SLOPE[:, None] * positions[None, :]).astype(np.float32),
        device_purchase_offset=_DEVICE_PURCHASE_OFFSET.astype(np.float32),
        weights=dict(DEFAULT_WEIGHTS),
    )

    shown, labels = _make_impressions(truth, pools, config, impressions_seed)
    logger.info("%d impressions in %.2fs", shown.size, time.perf_counter() - started)

    num_requests = config.num_requests
    row_request = np.repeat(np.arange(num_requests), list_size)
    interactions = pd.DataFrame(
        {
            USER_ID: np.repeat(truth.request_user, list_size),
            ITEM_ID: shown.reshape(-1),
            TIMESTAMP: np.repeat(requests.timestamp, list_size),
            LABEL: labels.reshape(-1),
            QUERY: _to_str_series(requests.query.take(pa.array(row_request))),
            REQUEST_ID: row_request,
            "device": _to_str_series(_string_array(DEVICES).take(pa.array(np.repeat(truth.request_device, list_size)))),
            "hour": np.repeat(requests.hour, list_size),
        },
        copy=False,
    )
    dataset = Dataset(
        name="synthetic-shop",
        schema=_SCHEMA,
        interactions=interactions,
        items=catalog.items_table(),
        users=users.table,
    )
    logger.info(
        "synthetic shop: %d users, %d items, %d interactions in %.2fs",
        config.num_users,
        config.num_items,
        len(interactions),
        time.perf_counter() - started,
    )
    return SyntheticShop(dataset=dataset, truth=truth, config=config)


def _string_array(values: list[str] | tuple[str, ...]) -> pa.Array:
    return pa.array(list(values), type=pa.large_string())


_SPACE = pa.scalar(" ", type=pa.large_string())


def _to_str_series(values: pa.Array) -> pd.Series:
    return pd.Series(values, dtype="str")


class _GroupSampler:
    """Draws one member of a given group with probability proportional to its weight, for many draws at once.

    Members are laid out group by group; each group's cumulative weights are normalised to ``(0, 1]`` and
    offset by the group number, so a single `np.searchsorted` of ``group + uniform`` serves every group.
    """

    def __init__(self, groups: np.ndarray, members: np.ndarray, weights: np.ndarray, num_groups: int) -> None:
        order = np.argsort(groups, kind="stable")
        groups = groups[order]
        self.members = members[order]
        weights = weights[order].astype(np.float64)
        counts = np.bincount(groups, minlength=num_groups)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        totals = np.bincount(groups, weights=weights, minlength=num_groups)
        cumulative = np.cumsum(weights / totals[groups])
        before = np.concatenate([[0.0], cumulative])[self.starts[:-1]]
        fraction = np.minimum(cumulative - np.repeat(before, counts), 1.0)  # rounding must not pass 1
        fraction[self.starts[1:][counts > 0] - 1] = 1.0
        self.keys = groups + fraction
        self.empty = counts == 0

    def sample(self, groups: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """Members of ``groups`` (non-empty ones) for ``uniforms`` in [0, 1); same shape as ``groups``."""
        targets = (groups + uniforms).ravel()
        # Searching sorted targets walks the keys in order: several times faster than random probes.
        order = np.argsort(targets)
        position = np.empty(targets.shape, np.int64)
        position[order] = np.searchsorted(self.keys, targets[order], side="right")
        position = np.minimum(position.reshape(np.shape(groups)), self.starts[groups + 1] - 1)
        return self.members[position]


@dataclass
class _Catalog:
    departments: list[str]
    nouns: list[str]
    leaves: list[str]
    brands: list[str]
    noun_department: np.ndarray
    leaf_noun: np.ndarray
    leaf_median_price: np.ndarray
    department_vectors: np.ndarray
    noun_vectors: np.ndarray
    brand_sampler: _GroupSampler  # group: department; member: brand
    item_leaf: np.ndarray
    item_brand: np.ndarray
    item_vector: np.ndarray
    item_quality: np.ndarray
    item_popularity: np.ndarray
    item_price: np.ndarray
    item_price_ratio: np.ndarray
    item_attributes: np.ndarray  # [num_items, 2] indices into the department's attribute word lists
    misspellings: dict[str, list[str]]

    @property
    def item_noun(self) -> np.ndarray:
        return self.leaf_noun[self.item_leaf]

    @property
    def item_department(self) -> np.ndarray:
        return self.noun_department[self.item_noun]

    def items_table(self) -> pd.DataFrame:
        department = pa.array(self.item_department)
        leaf = _string_array(self.leaves).take(pa.array(self.item_leaf))
        brand = _string_array(self.brands).take(pa.array(self.item_brand))
        words = []
        for column in range(2):
            flat = [word for name in self.departments for word in _TITLE_ATTRIBUTES[name][column]]
            per_department = len(_TITLE_ATTRIBUTES[self.departments[0]][column])
            index = self.item_department * per_department + self.item_attributes[:, column]
            words.append(_string_array(flat).take(pa.array(index)))
        title = pc.binary_join_element_wise(brand, leaf, *words, _SPACE)
        return pd.DataFrame(
            {
                ITEM_ID: np.arange(len(self.item_leaf), dtype=np.int64),
                "category_l1": _to_str_series(_string_array(self.departments).take(department)),
                "category_l2": _to_str_series(_string_array(self.nouns).take(pa.array(self.item_noun))),
                "category_leaf": _to_str_series(leaf),
                "brand": _to_str_series(brand),
                "price": self.item_price,
                "title": _to_str_series(title),
            },
            copy=False,
        )


@functools.cache
def _brand_name_pool() -> tuple[str, ...]:
    names = {
        onset + middle + ending for onset in _BRAND_ONSETS for middle in _BRAND_MIDDLES for ending in _BRAND_ENDINGS
    }
    return tuple(sorted(names))


def _misspell(text: str, count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct typos of ``text``: a letter dropped or swapped with its neighbour."""
    letters = [i for i, char in enumerate(text) if char.isalpha()]
    variants: list[str] = []
    for _ in range(50 * count):
        if len(variants) == count:
            break
        i = letters[int(rng.integers(len(letters)))]
        swap = rng.random() < 0.5
        if swap and i + 1 < len(text) and text[i + 1].isalpha() and text[i + 1] != text[i]:
            variant = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
        else:
            variant = text[:i] + text[i + 1 :]
        if variant != text and variant.strip() and variant not in variants:
            variants.append(variant)
    while len(variants) < count:  # a word too short to have `count` typos
        variants.append(variants[-1] if variants else text)
    return variants


def _make_catalog(config: SyntheticConfig, rng: np.random.Generator) -> _Catalog:
    departments = list(_CATEGORY_TREE)
    nouns, noun_department, leaves, leaf_noun = [], [], [], []
    for d, tree in enumerate(_CATEGORY_TREE.values()):
        for noun, qualifiers in tree.items():
            noun_department.append(d)
            for qualifier in qualifiers:
                leaves.append(f"{qualifier} {noun}")
                leaf_noun.append(len(nouns))
            nouns.append(noun)
    noun_department = np.array(noun_department, np.int32)
    leaf_noun = np.array(leaf_noun, np.int32)
    num_departments, num_nouns, num_leaves = len(departments), len(nouns), len(leaves)
    leaf_department = noun_department[leaf_noun]
    num_items, dim = config.num_items, config.latent_dim

    # Leaf medians: department price x noun factor x leaf factor.
    base = np.array([_DEPARTMENT_PRICE[name] for name in departments])
    noun_factor = np.exp(rng.normal(0.0, 0.5, num_nouns))
    leaf_median_price = (
        base[leaf_department] * noun_factor[leaf_noun] * np.exp(rng.normal(0.0, 0.2, num_leaves))
    ).astype(np.float32)

    # Brands: names, 1-3 departments each (every department has a brand), size, premium and quality.
    num_brands = config.resolved_num_brands
    pool = _brand_name_pool()
    brands = [pool[i] for i in rng.choice(len(pool), size=num_brands, replace=False)]
    primary = rng.permutation(num_brands) % num_departments
    extra = rng.integers(0, num_departments, size=(num_brands, 2))
    num_extra = rng.choice(3, size=num_brands, p=[0.5, 0.35, 0.15])
    brand_departments = np.column_stack([primary, extra]).astype(np.int32)
    brand_departments[:, 1:][np.arange(2)[None, :] >= num_extra[:, None]] = -1
    brand_departments[:, 1][brand_departments[:, 1] == primary] = -1
    brand_departments[:, 2][
        (brand_departments[:, 2] == primary) | (brand_departments[:, 2] == brand_departments[:, 1])
    ] = -1
    brand_size = (rng.permutation(num_brands) + 1.0) ** -0.8
    premium_z = rng.normal(size=num_brands)
    brand_log_premium = 0.35 * premium_z
    brand_quality = 0.25 * premium_z + 0.35 * rng.normal(size=num_brands)
    valid = brand_departments >= 0
    brand_sampler = _GroupSampler(
        groups=brand_departments[valid],
        members=np.broadcast_to(np.arange(num_brands)[:, None], brand_departments.shape)[valid],
        weights=np.broadcast_to(brand_size[:, None], brand_departments.shape)[valid],
        num_groups=num_departments,
    )

    # Items: the first items cover every leaf, departments interleaved, so even a tiny catalog has all
    # departments; the rest follow leaf shares. Then shuffled.
    per_department = num_leaves // num_departments
    round_robin = (np.arange(num_leaves) % num_departments) * per_department + np.arange(num_leaves) // num_departments
    leaf_share = np.exp(rng.normal(0.0, 0.7, num_leaves))
    extra_leaves = rng.choice(num_leaves, size=max(num_items - num_leaves, 0), p=leaf_share / leaf_share.sum())
    item_leaf = rng.permutation(np.concatenate([round_robin[:num_items], extra_leaves])).astype(np.int32)
    item_department = leaf_department[item_leaf]
    item_brand = brand_sampler.sample(item_department, rng.random(num_items)).astype(np.int32)

    raw_price = (
        leaf_median_price[item_leaf].astype(np.float64)
        * np.exp(brand_log_premium[item_brand])
        * np.exp(rng.normal(0.0, 0.25, num_items))
    )
    item_price = np.maximum(np.where(raw_price >= 5, np.round(raw_price), np.round(raw_price, 1)) - 0.01, 0.49)
    item_price = item_price.astype(np.float32)
    item_price_ratio = (np.log(item_price.astype(np.float64)) - np.log(leaf_median_price[item_leaf])).astype(np.float32)

    department_vectors = rng.normal(0.0, _LATENT_DEPARTMENT_SCALE, (num_departments, dim))
    noun_vectors = rng.normal(0.0, _LATENT_NOUN_SCALE, (num_nouns, dim))
    leaf_vectors = rng.normal(0.0, _LATENT_LEAF_SCALE, (num_leaves, dim))
    item_vector = (
        department_vectors[item_department]
        + noun_vectors[leaf_noun[item_leaf]]
        + leaf_vectors[item_leaf]
        + rng.normal(0.0, _LATENT_ITEM_NOISE, (num_items, dim))
    )
    item_vector = (item_vector / np.linalg.norm(item_vector, axis=1, keepdims=True)).astype(np.float32)
    item_quality = (brand_quality[item_brand] + rng.normal(0.0, 0.5, num_items)).astype(np.float32)

    # Zipf popularity over a ranking that leans toward quality.
    quality_z = (item_quality - item_quality.mean()) / max(float(item_quality.std()), 1e-6)
    rank = np.empty(num_items, np.int64)
    rank[np.argsort(-(0.7 * quality_z + rng.gumbel(size=num_items)), kind="stable")] = np.arange(num_items)
    item_popularity = (rank + 1.0) ** -config.popularity_exponent
    item_popularity /= item_popularity.sum()

    attribute_choices = [len(_TITLE_ATTRIBUTES[departments[0]][column]) for column in range(2)]
    item_attributes = np.column_stack([rng.integers(0, n, num_items) for n in attribute_choices])
    misspellings = {text: _misspell(text, _MISSPELLINGS_PER_WORD, rng) for text in [*leaves, *nouns]}
    return _Catalog(
        departments=departments,
        nouns=nouns,
        leaves=leaves,
        brands=brands,
        noun_department=noun_department,
        leaf_noun=leaf_noun,
        leaf_median_price=leaf_median_price,
        department_vectors=department_vectors,
        noun_vectors=noun_vectors,
        brand_sampler=brand_sampler,
        item_leaf=item_leaf,
        item_brand=item_brand,
        item_vector=item_vector,
        item_quality=item_quality,
        item_popularity=item_popularity,
        item_price=item_price,
        item_price_ratio=item_price_ratio,
        item_attributes=item_attributes,
        misspellings=misspellings,
    )


@dataclass
class _Users:
    truth: dict[str, np.ndarray]
    table: pd.DataFrame
    device: np.ndarray  # [num_users] preferred device


def _make_users(config: SyntheticConfig, catalog: _Catalog, rng: np.random.Generator) -> _Users:
    num_users, num_departments = config.num_users, len(catalog.departments)
    age = rng.choice(len(AGE_GROUPS), size=num_users, p=_AGE_PROBABILITIES)
    region = rng.choice(len(REGIONS), size=num_users, p=_REGION_PROBABILITIES)

    # Preferred departments: Gumbel top-k of age + region affinities; Dirichlet mixture weights.
    region_affinity = rng.normal(0.0, 0.6, (len(REGIONS), num_departments))
    logits = _AGE_DEPARTMENT_AFFINITY[age] + region_affinity[region] + rng.gumbel(size=(num_users, num_departments))
    departments = np.argsort(-logits, axis=1, kind="stable")[:, :3].astype(np.int32)
    count = rng.choice(3, size=num_users, p=[0.35, 0.4, 0.25]) + 1
    used = np.arange(3)[None, :] < count[:, None]
    departments[~used] = -1
    department_weights = rng.gamma(1.0, size=(num_users, 3)) * used
    department_weights = (department_weights / department_weights.sum(axis=1, keepdims=True)).astype(np.float32)

    # Taste: a mixture of the liked departments' directions, each with one favourite noun.
    nouns_per_department = len(catalog.nouns) // num_departments
    favourite_noun = np.maximum(departments, 0) * nouns_per_department + rng.integers(
        0, nouns_per_department, (num_users, 3)
    )
    components = catalog.department_vectors[np.maximum(departments, 0)] + 0.8 * catalog.noun_vectors[favourite_noun]
    taste = np.einsum("uk,ukd->ud", department_weights.astype(np.float64), components)
    taste += rng.normal(0.0, 0.3, taste.shape)
    taste = (taste / np.linalg.norm(taste, axis=1, keepdims=True)).astype(np.float32)

    # Price: thrift from age and region drives both the hinge slope and the comfort price.
    thrift = _AGE_THRIFT[age] + _REGION_THRIFT[region] + rng.normal(0.0, 0.5, num_users)
    price_sensitivity = (1.2 * np.exp(0.7 * thrift)).astype(np.float32)
    price_comfort = (0.2 - 0.3 * thrift).astype(np.float32)

    # Loyal brands: 0-3, from the liked departments; repeated brands dropped.
    num_loyal = rng.choice(4, size=num_users, p=[0.35, 0.3, 0.2, 0.15])
    slot_department = _pick_department(departments, department_weights, rng.random((num_users, 3)))
    loyal = catalog.brand_sampler.sample(slot_department, rng.random((num_users, 3))).astype(np.int32)
    loyal[np.arange(3)[None, :] >= num_loyal[:, None]] = -1
    loyal[:, 1][loyal[:, 1] == loyal[:, 0]] = -1
    loyal[:, 2][(loyal[:, 2] == loyal[:, 0]) | (loyal[:, 2] == loyal[:, 1])] = -1
    loyalty = (rng.uniform(0.5, 2.0, (num_users, 3)) * (loyal >= 0)).astype(np.float32)

    # Tenure and activity, correlated; activity is log-normal (a long tail of heavy users).
    tenure_z = rng.normal(size=num_users)
    tenure_days = np.clip(np.round(np.exp(5.3 + 0.9 * tenure_z + 0.15 * age)), 1, 3650).astype(np.float32)
    activity = np.exp(1.1 * (0.4 * tenure_z + 0.9165 * rng.normal(size=num_users))).astype(np.float32)

    device_cumulative = np.cumsum(_AGE_DEVICE_PROBABILITIES, axis=1)[age]
    device = np.minimum((rng.random(num_users)[:, None] >= device_cumulative).sum(axis=1), len(DEVICES) - 1)

    table = pd.DataFrame(
        {
            USER_ID: np.arange(num_users, dtype=np.int64),
            "age_group": _to_str_series(_string_array(AGE_GROUPS).take(pa.array(age))),
            "region": _to_str_series(_string_array(REGIONS).take(pa.array(region))),
            "tenure_days": tenure_days,
        },
        copy=False,
    )
    truth = {
        "user_taste": taste,
        "user_departments": departments,
        "user_department_weights": department_weights,
        "user_price_sensitivity": price_sensitivity,
        "user_price_comfort": price_comfort,
        "user_loyal_brands": loyal,
        "user_loyalty": loyalty,
        "user_activity": activity,
    }
    return _Users(truth=truth, table=table, device=device.astype(np.int8))


def _pick_department(departments: np.ndarray, weights: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """One liked department per uniform: ``departments``/``weights`` ``[n, 3]``, ``uniforms`` ``[n, ...]``."""
    cumulative = np.cumsum(weights, axis=1)
    shape = uniforms.shape
    flat = uniforms.reshape(shape[0], -1)
    slot = (flat[:, :, None] >= cumulative[:, None, :]).sum(axis=2)
    slot = np.minimum(slot, (departments >= 0).sum(axis=1, keepdims=True) - 1)
    return np.take_along_axis(departments, slot, axis=1).reshape(shape)


class _ItemPools:
    """Every item grouping a candidate can come from (leaf, noun, brand, brand + noun, department, global)."""

    def __init__(self, catalog: _Catalog) -> None:
        num_items = len(catalog.item_leaf)
        self.num_nouns = len(catalog.nouns)
        item_noun = catalog.item_noun
        pair = catalog.item_brand.astype(np.int64) * self.num_nouns + item_noun
        self.pair_keys, pair_group = np.unique(pair, return_inverse=True)
        sizes = [
            len(catalog.leaves),
            self.num_nouns,
            len(catalog.brands),
            len(self.pair_keys),
            len(catalog.departments),
        ]
        self.leaf, self.noun, self.brand, self.brand_noun, self.department, self.global_ = np.cumsum([0, *sizes])
        groupings = [catalog.item_leaf, item_noun, catalog.item_brand, pair_group, catalog.item_department]
        groups = np.concatenate(
            [offset + np.asarray(g, np.int64) for offset, g in zip(np.cumsum([0, *sizes[:-1]]), groupings, strict=True)]
            + [np.full(num_items, self.global_, np.int64)]
        )
        members = np.tile(np.arange(num_items, dtype=np.int64), len(groupings) + 1)
        weights = np.tile(catalog.item_popularity, len(groupings) + 1)
        self.sampler = _GroupSampler(groups, members, weights, int(self.global_) + 1)

        # An empty group falls back to its parent: leaf -> noun -> department -> global; brand -> global.
        parent = np.full(int(self.global_) + 1, self.global_, np.int64)
        parent[self.leaf : self.noun] = self.noun + catalog.leaf_noun
        parent[self.noun : self.brand] = self.department + catalog.noun_department
        self.resolved = np.arange(int(self.global_) + 1)
        for _ in range(4):
            self.resolved = np.where(self.sampler.empty[self.resolved], parent[self.resolved], self.resolved)

    def pair_group(self, brand: np.ndarray, noun: np.ndarray) -> np.ndarray:
        """Brand + noun group of each (brand, noun), ``-1`` where either is missing or no item has both."""
        key = brand.astype(np.int64) * self.num_nouns + noun
        position = np.minimum(np.searchsorted(self.pair_keys, key), len(self.pair_keys) - 1)
        found = (brand >= 0) & (noun >= 0) & (self.pair_keys[position] == key)
        return np.where(found, self.brand_noun + position, -1)

    def draw(self, groups: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        return self.sampler.sample(self.resolved[groups], uniforms)


@dataclass
class _Requests:
    truth: dict[str, np.ndarray]
    timestamp: np.ndarray  # [num_requests] int64
    hour: np.ndarray  # [num_requests] int8
    query: pa.Array  # [num_requests] large_string


def _make_requests(
    config: SyntheticConfig, catalog: _Catalog, users: _Users, pools: _ItemPools, rng: np.random.Generator
) -> _Requests:
    num_requests, num_departments = config.num_requests, len(catalog.departments)
    user_truth = users.truth

    # Sessions of 1 + Poisson requests, cut to exactly `num_requests`.
    lengths = 1 + rng.poisson(_MEAN_EXTRA_REQUESTS_PER_SESSION, num_requests)
    ends = np.cumsum(lengths)
    num_sessions = int(np.searchsorted(ends, num_requests)) + 1
    lengths = lengths[:num_sessions]
    lengths[-1] -= ends[num_sessions - 1] - num_requests
    session = np.repeat(np.arange(num_sessions), lengths)
    session_start = np.cumsum(lengths) - lengths

    activity_sampler = _GroupSampler(
        np.zeros(config.num_users, np.int64), np.arange(config.num_users), user_truth["user_activity"], 1
    )
    session_user = activity_sampler.sample(np.zeros(num_sessions, np.int64), rng.random(num_sessions))
    switch = rng.random(num_sessions) >= 0.85
    session_device = np.where(switch, rng.integers(0, len(DEVICES), num_sessions), users.device[session_user])
    hour_sampler = _GroupSampler(
        np.repeat(np.arange(len(DEVICES)), 24), np.tile(np.arange(24), len(DEVICES)), _HOUR_WEIGHTS.ravel(), 3
    )
    session_hour = hour_sampler.sample(session_device, rng.random(num_sessions))
    session_time = (
        config.start_time
        + rng.integers(0, config.num_days, num_sessions) * 86_400
        + session_hour * 3_600
        + rng.integers(0, 3_600, num_sessions)
    )
    liked = _pick_department(
        user_truth["user_departments"][session_user],
        user_truth["user_department_weights"][session_user],
        rng.random(num_sessions),
    )
    explore = rng.random(num_sessions) < _EXPLORE_PROBABILITY
    session_department = np.where(explore, rng.integers(0, num_departments, num_sessions), liked)

    gaps = rng.exponential(_MEAN_SECONDS_BETWEEN_REQUESTS, num_requests).astype(np.int64)
    gaps[session_start] = 0
    elapsed = np.cumsum(gaps)
    timestamp = (session_time[session] + elapsed - np.repeat(elapsed[session_start], lengths)).astype(np.int64)
    user = session_user[session].astype(np.int64)
    device = session_device[session].astype(np.int8)
    department = session_department[session].astype(np.int32)

    # Kinds and intents. An anchor item from the session's department, or from a loyal brand for a brand
    # query, fixes the intent, so every intent has items.
    text = 1.0 - config.browse_fraction - config.generic_fraction
    branded = config.brand_query_fraction
    kind_probability = np.array(
        [
            config.browse_fraction,
            config.generic_fraction / 2,
            config.generic_fraction / 2,
            text * (1 - branded) * 0.55,
            text * (1 - branded) * 0.45,
            text * branded * 0.75,
            text * branded * 0.25,
        ]
    )
    kind_cumulative = np.cumsum(kind_probability / kind_probability.sum())
    kind_cumulative[-1] = 1.0
    kind = np.searchsorted(kind_cumulative, rng.random(num_requests), side="right").astype(np.int8)
    anchor = pools.draw(pools.department + department, rng.random(num_requests))
    loyal = user_truth["user_loyal_brands"][user, rng.integers(0, 3, num_requests)]
    use_loyal = (
        np.isin(kind, (KIND_BRAND_NOUN, KIND_BRAND))
        & (loyal >= 0)
        & (rng.random(num_requests) < _LOYAL_BRAND_QUERY_PROBABILITY)
    )
    use_loyal &= ~pools.sampler.empty[pools.brand + np.maximum(loyal, 0)]
    anchor = np.where(use_loyal, pools.draw(pools.brand + np.maximum(loyal, 0), rng.random(num_requests)), anchor)
    has_intent = kind >= KIND_LEAF
    department = np.where(has_intent, catalog.item_department[anchor], department).astype(np.int32)
    leaf = np.where(kind == KIND_LEAF, catalog.item_leaf[anchor], -1).astype(np.int32)
    noun = np.where(np.isin(kind, (KIND_LEAF, KIND_NOUN, KIND_BRAND_NOUN)), catalog.item_noun[anchor], -1)
    brand = np.where(np.isin(kind, (KIND_BRAND_NOUN, KIND_BRAND)), catalog.item_brand[anchor], -1)
    misspelled = np.isin(kind, (KIND_LEAF, KIND_NOUN)) & (rng.random(num_requests) < config.misspell_fraction)
    query = _query_text(catalog, kind, leaf, noun, brand, misspelled, rng)

    order = np.argsort(timestamp, kind="stable")
    timestamp = timestamp[order]
    truth = {
        "request_user": user[order],
        "request_kind": kind[order],
        "request_department": department[order],
        "request_leaf": leaf[order],
        "request_noun": noun[order].astype(np.int32),
        "request_brand": brand[order].astype(np.int32),
        "request_misspelled": misspelled[order],
        "request_device": device[order],
    }
    return _Requests(
        truth=truth,
        timestamp=timestamp,
        hour=((timestamp // 3_600) % 24).astype(np.int8),
        query=query.take(pa.array(order)),
    )


def _query_text(
    catalog: _Catalog,
    kind: np.ndarray,
    leaf: np.ndarray,
    noun: np.ndarray,
    brand: np.ndarray,
    misspelled: np.ndarray,
    rng: np.random.Generator,
) -> pa.Array:
    """The query string of each request, assembled from a table of word "atoms" with Arrow kernels."""
    typo = _MISSPELLINGS_PER_WORD
    atoms = [
        "",
        *_DEAL_WORDS,
        *_GIFT_WORDS,
        *catalog.leaves,
        *catalog.nouns,
        *[v for text in catalog.leaves for v in catalog.misspellings[text]],
        *[v for text in catalog.nouns for v in catalog.misspellings[text]],
        *[name.lower() for name in catalog.brands],
    ]
    deal = 1
    gift = deal + len(_DEAL_WORDS)
    leaf_atom = gift + len(_GIFT_WORDS)
    noun_atom = leaf_atom + len(catalog.leaves)
    leaf_typo = noun_atom + len(catalog.nouns)
    noun_typo = leaf_typo + typo * len(catalog.leaves)
    brand_atom = noun_typo + typo * len(catalog.nouns)

    n = len(kind)
    variant = rng.integers(0, typo, n)
    first = np.zeros(n, np.int64)
    first = np.where(kind == KIND_DEAL, deal + rng.integers(0, len(_DEAL_WORDS), n), first)
    first = np.where(kind == KIND_GIFT, gift + rng.integers(0, len(_GIFT_WORDS), n), first)
    first = np.where(
        kind == KIND_LEAF, np.where(misspelled, leaf_typo + typo * leaf + variant, leaf_atom + leaf), first
    )
    first = np.where(
        kind == KIND_NOUN, np.where(misspelled, noun_typo + typo * noun + variant, noun_atom + noun), first
    )
    first = np.where(np.isin(kind, (KIND_BRAND_NOUN, KIND_BRAND)), brand_atom + brand, first)
    table = _string_array(atoms)
    text = table.take(pa.array(first))
    with_noun = kind == KIND_BRAND_NOUN
    if with_noun.any():
        joined = pc.binary_join_element_wise(text, table.take(pa.array(noun_atom + np.maximum(noun, 0))), _SPACE)
        text = pc.if_else(pa.array(with_noun), joined, text)
    return text


def _first_unique(candidates: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``size`` distinct entries of each row, in row order.

    Args:
        candidates: ``[num_rows, width]`` item ids, ``width >= size``.
        size: Entries to keep per row.

    Returns:
        ``[num_rows, size]`` items (entries past the row's count are leftovers to be replaced) and
        ``[num_rows]`` counts of distinct entries kept.
    """
    order = np.argsort(candidates, axis=1, kind="stable")
    ordered = np.take_along_axis(candidates, order, axis=1)
    repeated_sorted = np.zeros(candidates.shape, bool)
    repeated_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    keep = np.empty_like(repeated_sorted)
    np.put_along_axis(keep, order, ~repeated_sorted, axis=1)
    keep &= np.cumsum(keep, axis=1) <= size
    counts = keep.sum(axis=1)
    columns = np.argsort(~keep, axis=1, kind="stable")[:, :size]
    return np.take_along_axis(candidates, columns, axis=1), counts


def _make_impressions(
    truth: ShopTruth, pools: _ItemPools, config: SyntheticConfig, seed: np.random.SeedSequence
) -> tuple[np.ndarray, np.ndarray]:
    """Shown items and labels, ``[num_requests, list_size]`` each, request chunk by request chunk."""
    num_requests, size = truth.num_requests, config.list_size
    shown_all = np.empty((num_requests, size), np.int64)
    labels_all = np.empty((num_requests, size), np.int8)
    mix = np.cumsum(_SOURCE_MIX / _SOURCE_MIX.sum(axis=1, keepdims=True), axis=1)
    mix[:, -1] = 1.0
    starts = range(0, num_requests, _REQUESTS_PER_CHUNK)
    for start, child in zip(starts, seed.spawn(len(starts)), strict=True):
        rng = np.random.default_rng(child)
        requests = np.arange(start, min(start + _REQUESTS_PER_CHUNK, num_requests))
        shown = _draw_shown(truth, pools, requests, size, mix, rng)
        relevance = truth._score(requests, shown)
        policy = config.logging_policy_strength * relevance + rng.gumbel(size=relevance.shape)
        order = np.argsort(-policy, axis=1, kind="stable")
        shown = np.take_along_axis(shown, order, axis=1)
        relevance = np.take_along_axis(relevance, order, axis=1)
        shown_all[requests] = shown
        labels_all[requests] = _feedback(truth, requests, shown, relevance, rng)
    return shown_all, labels_all


def _draw_shown(
    truth: ShopTruth, pools: _ItemPools, requests: np.ndarray, size: int, mix: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``[len(requests), size]`` distinct items per request from the kind's mixture of candidate sources."""
    num, width = len(requests), _CANDIDATES_PER_SLOT * size
    users = truth.request_user[requests]
    department = pools.department + truth.request_department[requests].astype(np.int64)
    leaf, noun, brand = (truth.request_leaf[requests], truth.request_noun[requests], truth.request_brand[requests])
    loyal = truth.user_loyal_brands[users, rng.integers(0, truth.user_loyal_brands.shape[1], num)]
    # The pool of each source, in `_SOURCE_MIX` column order; -1 where the request has no such entity.
    source_group = np.column_stack(
        [
            np.where(leaf >= 0, pools.leaf + leaf.astype(np.int64), -1),
            np.where(noun >= 0, pools.noun + noun.astype(np.int64), -1),
            np.where(brand >= 0, pools.brand + brand.astype(np.int64), -1),
            pools.pair_group(brand, noun),
            department,
            np.full(num, pools.global_, np.int64),
            np.where(loyal >= 0, pools.brand + loyal.astype(np.int64), -1),
        ]
    )
    source = (rng.random((num, width))[:, :, None] >= mix[truth.request_kind[requests]][:, None, :]).sum(axis=2)
    groups = np.take_along_axis(source_group, source, axis=1)
    groups = np.where(groups >= 0, groups, department[:, None])
    candidates = pools.draw(groups, rng.random((num, width)))
    shown, counts = _first_unique(candidates, size)

    # Top up the rare short lists with uniform draws until every list has `size` distinct items.
    num_items = truth.num_items
    for _ in range(_MAX_FILL_ROUNDS):
        short = np.flatnonzero(counts < size)
        if not len(short):
            return shown
        rows = shown[short]
        missing = np.arange(size)[None, :] >= counts[short, None]
        rows[missing] = rng.integers(0, num_items, int(missing.sum()))
        shown[short], counts[short] = _first_unique(rows, size)
    for row in np.flatnonzero(counts < size):  # a catalog barely larger than a list
        have = shown[row, : counts[row]]
        rest = rng.permutation(np.setdiff1d(np.arange(num_items), have))[: size - counts[row]]
        shown[row] = np.concatenate([have, rest])
    return shown


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


def _feedback(
    truth: ShopTruth, requests: np.ndarray, shown: np.ndarray, relevance: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Graded labels ``[num, size]`` int8 for lists ``shown`` (display order) with true ``relevance``."""
    w = truth.weights
    users = truth.request_user[requests]
    device = truth.request_device[requests]
    uniforms = rng.random((3, *shown.shape), dtype=np.float32)
    click = uniforms[0] < _sigmoid(relevance + truth.position_bias[device] + w["click_offset"])
    cart = click & (uniforms[1] < _sigmoid(w["cart_offset"] + w["cart_slope"] * relevance))
    hinge = np.maximum(truth.item_price_ratio[shown] - truth.user_price_comfort[users][:, None], 0)
    purchase_logit = (
        w["purchase_offset"]
        + w["purchase_slope"] * relevance
        - w["purchase_price"] * truth.user_price_sensitivity[users][:, None] * hinge
        + truth.device_purchase_offset[device][:, None]
    )
    purchase = cart & (uniforms[2] < _sigmoid(purchase_logit))
    return (click.astype(np.int8) + cart + purchase).astype(np.int8)


# --------------------------------------------------------------------------------------------------------------
# Writing.
# --------------------------------------------------------------------------------------------------------------
def write_shop(shop: SyntheticShop, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Writes the tables, the truth and a ``spec.toml`` into ``out_dir``, atomically.

    Everything is written into a temporary sibling directory (``.{name}.tmp-XXXX``) that is renamed into place
    once complete, so a reader never sees half a shop.

    Args:
        shop: The shop to write.
        out_dir: The directory to create (``interactions.parquet``, ``items.parquet``, ``users.parquet``,
            ``truth/`` and ``spec.toml``).
        overwrite: Replace ``out_dir`` if it exists.

    Returns:
        The path of ``spec.toml``.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _new_sibling(out_dir, "tmp")
    try:
        dataset = shop.dataset
        dataset.interactions.to_parquet(staging / "interactions.parquet", index=False)
        dataset.items.to_parquet(staging / "items.parquet", index=False)
        if dataset.users is not None:
            dataset.users.to_parquet(staging / "users.parquet", index=False)
        shop.truth.save(staging / "truth")
        (staging / "spec.toml").write_text(_spec_toml(shop.config))
        if out_dir.exists():
            retired = _new_sibling(out_dir, "old")
            os.replace(out_dir, retired / out_dir.name)
            os.replace(staging, out_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote synthetic shop to %s", out_dir)
    return out_dir / "spec.toml"


def _new_sibling(path: Path, tag: str) -> Path:
    """Creates an empty hidden sibling directory ``.{name}.{tag}-XXXXXXXX`` (mode from the umask, unlike mkdtemp)."""
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{tag}-{secrets.token_hex(4)}"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a temporary directory next to {path}")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")


def _spec_toml(config: SyntheticConfig) -> str:
    label = _SCHEMA.label
    names = ", ".join(f'"{key}" = {_toml_value(name)}' for key, name in sorted(label.names.items()))
    sections = {
        "interactions": {
            "path": "interactions.parquet",
            "user_id": USER_ID,
            "item_id": ITEM_ID,
            "order": TIMESTAMP,
            "label": LABEL,
            "query": QUERY,
            "request_id": REQUEST_ID,
            "context": list(_SCHEMA.context),
        },
        "items": {
            "path": "items.parquet",
            "item_id": ITEM_ID,
            "categorical": list(_SCHEMA.item_categorical),
            "numeric": list(_SCHEMA.item_numeric),
            "text": list(_SCHEMA.item_text),
        },
        "users": {
            "path": "users.parquet",
            "user_id": USER_ID,
            "categorical": list(_SCHEMA.user_categorical),
            "numeric": list(_SCHEMA.user_numeric),
        },
        "synthetic": config.to_dict(),
    }
    lines = [
        'name = "synthetic-shop"',
        'format = "tables"',
        'policy = "error"',
        "",
        "[label]",
        f'kind = "{label.kind}"',
        f"min = {int(label.min)}",
        f"max = {int(label.max)}",
        f"positive_threshold = {int(label.positive_threshold)}",
        f"names = {{ {names} }}",
    ]
    for section, values in sections.items():
        lines += ["", f"[{section}]", *(f"{key} = {_toml_value(value)}" for key, value in values.items())]
    return "\n".join(lines) + "\n"
