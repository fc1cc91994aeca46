"""Ticket topics, offline: TF-IDF, latent semantic analysis and spherical k-means.

Nothing is fetched at run time: the vocabulary, the projection and the topic centres
are learnt from the (masked) ticket text itself. The number of topics is chosen from
the data: for each k of a small grid, k-means is run from a few seeds on a sample
and the k whose partitions agree best (mean pairwise adjusted Rand index) wins;
near-ties go to the smaller k. Each topic gets a readable label (its top terms) and
its most representative masked ticket. `assign` puts new tickets into fitted topics.

NMF on the same TF-IDF was measured alongside (benchmarks/bench_topics.py): on the
planted topics it reached a lower NMI at the same k, so k-means on the LSA space is
the default; NMF's top-term labels are what the centroid terms reproduce here.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer
from sklearn.metrics import adjusted_rand_score
from sklearn.preprocessing import normalize

from insights.errors import InsightsError
from insights.text.mask import mask_texts, prepare_texts

log = logging.getLogger(__name__)

UNASSIGNED = -1
K_GRID = (12, 16, 20, 24, 28, 32)
# Words every ticket may carry whatever it is about: greetings, sign-offs, the mask tokens.
_TICKET_STOP_WORDS = frozenset(
    "hi hello hey team thanks thank regards kind cheers morning good asap thx reach ring pm name pls "
    "instead email phone id please dear".split()
)
_STOP_WORDS = sorted(ENGLISH_STOP_WORDS | _TICKET_STOP_WORDS)


@dataclass(frozen=True)
class Topic:
    """One fitted topic: its index, readable label, top terms, size and a representative masked ticket."""

    topic: int
    label: str
    top_terms: tuple[str, ...]
    size: int
    example: str


@dataclass
class TopicModel:
    """A fitted topic model: vectoriser, projection, centres, and the topics' descriptions."""

    vectorizer: TfidfVectorizer
    svd: TruncatedSVD
    centers: np.ndarray
    topics: list[Topic]
    stability: dict[int, float]

    @property
    def n_topics(self) -> int:
        """How many topics the data asked for."""
        return len(self.topics)

    def label_of(self, topic: int) -> str:
        """The readable label of a topic index (UNASSIGNED: "unassigned")."""
        return "unassigned" if topic == UNASSIGNED else self.topics[topic].label


def _embed(model_vec: TfidfVectorizer, svd: TruncatedSVD, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    x = model_vec.transform(texts)
    empty = np.asarray(x.getnnz(axis=1) == 0)
    z = normalize(svd.transform(x))
    return z, empty


def fit_topics(
    texts: Sequence[object],
    *,
    known_names: Sequence[Sequence[str]] | None = None,
    k_grid: Sequence[int] = K_GRID,
    n_components: int = 60,
    sample_size: int = 3000,
    random_state: int = 0,
) -> TopicModel:
    """Learn topics from ticket texts (masked here first; `known_names[i]` are the writer's names).

    Texts without a single known term (empty, "help", "???") are left out of the fit and are
    `UNASSIGNED` when assigned.
    """
    prepared = prepare_texts(texts)
    masked = mask_texts(prepared.texts, known_names)
    vec = TfidfVectorizer(
        min_df=3 if len(masked) >= 300 else 1,
        max_df=0.5,
        ngram_range=(1, 2),
        sublinear_tf=True,
        stop_words=_STOP_WORDS,
        token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b",
        dtype=np.float32,
    )
    try:
        x = vec.fit_transform(masked)
    except ValueError as exc:  # no usable term at all
        raise InsightsError(f"description: no ticket text with usable words to learn topics from ({exc})") from exc
    keep = np.flatnonzero(np.asarray(x.getnnz(axis=1) > 0))
    grid = sorted({k for k in k_grid if 2 <= k < max(keep.size // 5, 3)}) or [max(2, min(keep.size // 5, 2))]
    if keep.size < 2 * grid[0]:
        raise InsightsError(f"description: {keep.size} ticket texts with usable words, too few to learn topics from")
    dims = max(2, min(n_components, x.shape[1] - 1, keep.size - 1))
    svd = TruncatedSVD(dims, random_state=random_state, n_iter=3)
    z = normalize(svd.fit_transform(x[keep]))
    rng = np.random.default_rng(random_state)
    sample = rng.choice(keep.size, min(sample_size, keep.size), replace=False)
    stability = {k: _stability(z[sample], k, random_state) for k in grid}
    best = max(stability.values())
    k = min(kk for kk, s in stability.items() if s >= best - 0.02)
    km = KMeans(k, n_init=3, random_state=random_state).fit(z)
    centers = normalize(km.cluster_centers_)
    labels = km.labels_
    topics = _describe(vec, svd, centers, z, labels, [masked[i] for i in keep])
    log.info("ticket topics: %d from %d texts (stability by k: %s)", k, keep.size, stability)
    return TopicModel(vec, svd, centers, topics, stability)


def assign_topics(
    model: TopicModel, texts: Sequence[object], known_names: Sequence[Sequence[str]] | None = None
) -> np.ndarray:
    """The fitted topic of each ticket text (masked first); UNASSIGNED where no known term occurs."""
    prepared = prepare_texts(texts)
    if not prepared.texts:
        return np.empty(0, dtype=np.int64)
    z, empty = _embed(model.vectorizer, model.svd, mask_texts(prepared.texts, known_names))
    out = np.asarray((z @ model.centers.T).argmax(axis=1), dtype=np.int64)
    out[empty] = UNASSIGNED
    return out


def _stability(z: np.ndarray, k: int, random_state: int, runs: int = 3) -> float:
    labels = [KMeans(k, n_init=1, random_state=random_state + r).fit(z).labels_ for r in range(runs)]
    return float(np.mean([adjusted_rand_score(a, b) for a, b in itertools.combinations(labels, 2)]))


def _describe(
    vec: TfidfVectorizer,
    svd: TruncatedSVD,
    centers: np.ndarray,
    z: np.ndarray,
    labels: np.ndarray,
    masked: list[str],
) -> list[Topic]:
    terms = np.asarray(vec.get_feature_names_out())
    weights = centers @ svd.components_  # the centres back in term space
    topics = []
    for k in range(centers.shape[0]):
        order = np.argsort(-weights[k])
        top: list[str] = []
        for t in terms[order]:
            # Skip a unigram already inside a chosen bigram, and a bigram repeating chosen words.
            if any(t in chosen.split() or set(t.split()) <= set(chosen.split()) for chosen in top):
                continue
            top.append(str(t))
            if len(top) == 6:
                break
        members = np.flatnonzero(labels == k)
        if members.size:
            closest = members[np.argmax(z[members] @ centers[k])]
            example = masked[closest]
        else:
            example = ""
        topics.append(Topic(k, " / ".join(top[:3]), tuple(top), int(members.size), example))
    return topics
