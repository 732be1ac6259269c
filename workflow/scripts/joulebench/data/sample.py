"""Train on less data: pick a subset of the training split (val and test stay whole).

Methods:
- random: a uniform sample of round(fraction * N) training images.
- stratified: round(fraction * n_c) images of every class c (at least one per class), so the
  class balance is kept exactly.
- el2n: the data-pruning score of Paul, Ganguli & Dziugaite, "Deep Learning on a Data Diet:
  Finding Important Examples Early in Training" (NeurIPS 2021): the L2 norm of
  softmax(f(x)) - onehot(y) after a short proxy training run. Easy examples (low EL2N) are pruned,
  the round(fraction * N) highest-scoring ones are kept, over the whole split as in the paper.
"""

import logging

import numpy as np
import torch

from joulebench.data.loader import loader

log = logging.getLogger(__name__)

METHODS = ("random", "stratified", "el2n")


def subset_size(count: int, fraction: float) -> int:
    """round(fraction * count), half up, at least one."""
    return max(1, int(np.floor(fraction * count + 0.5)))


def random_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(labels), size=subset_size(len(labels), fraction), replace=False))


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Per class c exactly subset_size(n_c, fraction) images, chosen uniformly within the class."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.choice(members, size=subset_size(len(members), fraction), replace=False))
    return np.sort(np.concatenate(chosen))


@torch.no_grad()
def el2n_scores(model: torch.nn.Module, arrays: dict, batch_size: int = 512) -> np.ndarray:
    """EL2N of every training image under `model`: ||softmax(logits) - onehot(label)||_2."""
    device = next(model.parameters()).device
    model.eval()
    scores = []
    for images, labels in loader(arrays, "train", batch_size, device=device):
        probabilities = torch.softmax(model(images.to(device)).float(), dim=1).cpu()
        onehot = torch.nn.functional.one_hot(labels, probabilities.shape[1]).float()
        scores.append(torch.linalg.vector_norm(probabilities - onehot, dim=1))
    return torch.cat(scores).numpy()


def highest_scores(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the round(fraction * N) highest scores; ties broken by index, so it is repeatable."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return np.sort(order[: subset_size(len(scores), fraction)])


def take_train_subset(arrays: dict, indices: np.ndarray) -> dict:
    subset = dict(arrays)
    for key in ("x", "y", "id"):
        subset[f"train_{key}"] = arrays[f"train_{key}"][indices]
    return subset


def class_balance(labels: np.ndarray, num_classes: int) -> dict:
    counts = np.bincount(labels, minlength=num_classes)
    return {"count": int(counts.sum()), "class_counts": [int(c) for c in counts]}


# What an el2n choice imports on first use (np.median loads numpy.ma), for sample_dataset to
# import before its energy window opens.
WORK_MODULES = ("numpy.ma",)


def select_subset(arrays: dict, facts: dict, variant: dict, training: dict, seed: int, meter) -> tuple:
    """The training examples `variant` keeps (method random, stratified or el2n) and what the
    choice rests on; an el2n proxy run trains and scores under `meter`. Returns (indices, facts)."""
    from joulebench.models import build_model, model_recipe
    from joulebench.train.loop import seed_everything, train, training_settings

    labels, fraction, method = arrays["train_y"], variant["fraction"], variant["method"]
    if method == "random":
        return random_subset(labels, fraction, seed), {}
    if method == "stratified":
        return stratified_subset(labels, fraction, seed), {}
    seed_everything(seed)
    recipe = model_recipe(
        variant["proxy_model"], facts["channels"], facts["num_classes"], facts["image_size"]
    )
    proxy = build_model(recipe)
    settings = training_settings(training, seed, epochs=variant["proxy_epochs"])
    history = train(proxy, arrays, settings, meter)
    with meter.window("score"):
        scores = el2n_scores(proxy, arrays)
    chosen = highest_scores(scores, fraction)
    return chosen, {
        "proxy": {**recipe, "epochs": variant["proxy_epochs"], "history": history},
        "score_kept_min": float(scores[chosen].min()),
        "score_all_median": float(np.median(scores)),
    }
