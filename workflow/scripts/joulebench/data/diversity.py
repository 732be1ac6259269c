"""How diverse a dataset is, so data optimisation can show it kept diversity (D1 >= D0).

- Class entropy: Shannon entropy of the class shares, in nats and normalised by log(classes)
  (Pielou's evenness: 1 = perfectly balanced, 0 = one class).
- Vendi score (Friedman & Dieng, "The Vendi Score: A Diversity Evaluation Metric for Machine
  Learning", TMLR 2023): exp of the Shannon entropy of the eigenvalues of K / n, where K is a
  similarity kernel with K(x, x) = 1. It is the effective number of distinct images: 1 when all are
  the same, n when all are orthogonal. Here K is the cosine similarity of weight-free embeddings
  (8x8 area-averaged thumbnails per channel, mean removed) of a random sample. The score grows
  with the sample's size, so stages that are compared (raw and cleaned, cleaned and sampled) are
  scored on samples of one size, the smaller stage's (at most SAMPLE): diversity_of_stages;
  `vendi_sample` records it.
"""

import numpy as np

SAMPLE = 1000  # most images per Vendi score (the cost grows with it)
THUMBNAIL = 8


def class_entropy(labels: np.ndarray, num_classes: int) -> dict:
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    shares = counts[counts > 0] / counts.sum()
    nats = float(-(shares * np.log(shares)).sum())
    return {
        "class_entropy_nats": nats,
        "class_evenness": nats / np.log(num_classes) if num_classes > 1 else 0.0,
    }


def embeddings(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) images (any dtype) -> (N, C * 64) unit vectors: thumbnails with the mean removed."""
    from joulebench.data.image_hash import area_weights

    _, channels, height, width = images.shape
    rows, cols = area_weights(height, THUMBNAIL), area_weights(width, THUMBNAIL)
    small = (rows @ np.asarray(images, dtype=np.float64) @ cols.T).reshape(len(images), -1)
    small -= small.mean(axis=1, keepdims=True)
    return small / np.maximum(np.linalg.norm(small, axis=1, keepdims=True), 1e-12)


def vendi_score(vectors: np.ndarray) -> float:
    """Vendi score of unit vectors under the cosine kernel K = X X^T. The nonzero eigenvalues of
    K / n are those of X^T X / n, a (d, d) matrix, so the cost does not grow with n squared."""
    if len(vectors) == 0:
        return 0.0
    eigenvalues = np.linalg.eigvalsh(vectors.T @ vectors / len(vectors))
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))


def diversity(
    images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0, sample: int = SAMPLE
) -> dict:
    """Class entropy of all images and the Vendi score of a random sample of `sample` of them
    (all of them where there are fewer)."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(labels), size=min(sample, len(labels)), replace=False))
    return {
        "images": int(len(labels)),
        **class_entropy(labels, num_classes),
        "vendi_score": vendi_score(embeddings(images[chosen])),
        "vendi_sample": int(len(chosen)),
        "vendi_kernel": "cosine of 8x8 thumbnails (mean removed)",
    }


def diversity_of_stages(
    stages: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int, seed: int = 0
) -> dict:
    """diversity() of each data stage ({name: (images, labels)}) that are compared with each other,
    every Vendi score on a sample of one size: the smallest stage's, at most SAMPLE. A subset of
    584 images scored on all 584 against its source scored on 1,000 would lose diversity by the
    sample size alone."""
    size = min(SAMPLE, *(len(labels) for _, labels in stages.values()))
    return {
        name: diversity(images, labels, num_classes, seed, size) for name, (images, labels) in stages.items()
    }
