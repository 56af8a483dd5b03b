"""Fully connected (dense) CRF over an RGB image, with pydensecrf.

Two uses in the workflow:

* :func:`crf_labels` refines a hard label map (the confident foreground / background maps
  of ``cam_to_ir_label``): every pixel's unary says "my label is right with probability
  ``label_confidence``, every other label shares the rest", as IRN's
  ``crf_inference_label``.
* :func:`dense_crf` refines soft class probabilities (DeepLab's multi-scale output); the
  unary is the negative log of the clipped probabilities.

Both add the same two pairwise terms (Kraehenbuehl & Koltun 2011): a Gaussian
smoothness kernel over position (``gauss_sxy``, weight ``gauss_compat``) and a bilateral
appearance kernel over position and RGB (``bilateral_sxy``, ``bilateral_srgb``, weight
``bilateral_compat``), and run ``iterations`` mean-field steps.

The CRF package is required; there is no fallback. It is ``pydensecrf2`` on PyPI (a
maintained fork of ``pydensecrf`` that builds on Python 3.11 with NumPy 2), imported as
``pydensecrf.densecrf``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from qaclims.core.config import setting

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the dense CRF needs the pydensecrf package; install it with `pip install pydensecrf2` "
    "(a maintained fork that builds on Python 3.11 / NumPy 2; it is imported as "
    "pydensecrf.densecrf)"
)


@dataclass(frozen=True)
class CrfConfig:
    """Dense-CRF settings (defaults: IRN's ``crf_inference_label``, used for ir labels).

    iterations: mean-field steps.
    gauss_sxy / gauss_compat: spatial std (pixels) and weight of the smoothness kernel.
    bilateral_sxy / bilateral_srgb / bilateral_compat: spatial std (pixels), colour std
        (0..255 units) and weight of the appearance kernel.
    label_confidence: probability :func:`crf_labels` gives each pixel's own label, in (0,1).
    prob_clip: lower clip of the probabilities :func:`dense_crf` takes the log of.
    """

    iterations: int = setting(10, ge=0, doc="mean-field steps.")
    gauss_sxy: float = setting(3.0, gt=0.0, doc="spatial std (pixels) of the smoothness kernel.")
    gauss_compat: float = setting(3.0, ge=0.0, doc="weight of the smoothness kernel.")
    bilateral_sxy: float = setting(
        50.0, gt=0.0, doc="spatial std (pixels) of the appearance kernel."
    )
    bilateral_srgb: float = setting(
        5.0, gt=0.0, doc="colour std (0..255 units) of the appearance kernel."
    )
    bilateral_compat: float = setting(10.0, ge=0.0, doc="weight of the appearance kernel.")
    label_confidence: float = setting(0.7, gt=0.0, lt=1.0)
    prob_clip: float = setting(1e-5, gt=0.0, lt=1.0)


def densecrf_module() -> ModuleType:
    """The ``pydensecrf.densecrf`` module; raises ``ImportError`` saying how to install it."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return dcrf


def _check_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 uint8, got {image.shape} {image.dtype}")
    if image.shape[:2] != shape:
        raise ValueError(f"image is {image.shape[:2]} but the scores are {shape}")
    return np.ascontiguousarray(image)


def _infer(image: np.ndarray, unary: np.ndarray, cfg: CrfConfig) -> np.ndarray:
    """Mean-field inference; ``unary`` is ``KxN float32`` energies, returns ``KxHxW`` marginals."""
    dcrf = densecrf_module()
    h, w = image.shape[:2]
    k = unary.shape[0]
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    d.addPairwiseGaussian(sxy=cfg.gauss_sxy, compat=cfg.gauss_compat)
    d.addPairwiseBilateral(
        sxy=cfg.bilateral_sxy, srgb=cfg.bilateral_srgb, rgbim=image, compat=cfg.bilateral_compat
    )
    q = d.inference(cfg.iterations)
    return np.asarray(q, dtype=np.float32).reshape(k, h, w)


def dense_crf(image: np.ndarray, probs: np.ndarray, cfg: CrfConfig) -> np.ndarray:
    """Refine class probabilities with a dense CRF.

    Args:
        image: ``HxWx3 uint8`` RGB.
        probs: ``KxHxW float32`` class probabilities (softmax-like, summing to 1 over K).
        cfg: CRF settings; ``prob_clip`` bounds the probabilities away from 0 before the log.

    Returns:
        ``KxHxW float32`` marginals in [0,1] summing to 1 over K.
    """
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 3:
        raise ValueError(f"probs must be KxHxW, got shape {p.shape}")
    img = _check_image(image, (p.shape[1], p.shape[2]))
    unary = -np.log(np.clip(p, cfg.prob_clip, 1.0)).reshape(p.shape[0], -1)
    return _infer(img, unary, cfg)


def label_unary(labels: np.ndarray, n_labels: int, confidence: float) -> np.ndarray:
    """``KxN float32`` energies: ``-log(confidence)`` at each pixel's label, ``-log((1-c)/(K-1))``
    elsewhere. ``labels``: ``HxW`` int in ``[0, n_labels)``; needs ``n_labels >= 2``."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"label_confidence must lie in (0, 1), got {confidence}")
    flat = labels.reshape(-1)
    off = -np.log((1.0 - confidence) / (n_labels - 1))
    unary = np.full((n_labels, flat.size), off, dtype=np.float32)
    unary[flat, np.arange(flat.size)] = -np.log(confidence)
    return unary


def crf_labels(image: np.ndarray, scores: np.ndarray, cfg: CrfConfig) -> np.ndarray:
    """Refine the hard labels ``argmax_k scores`` with a dense CRF.

    Args:
        image: ``HxWx3 uint8`` RGB.
        scores: ``KxHxW`` float scores; only their per-pixel argmax is used.
        cfg: CRF settings; ``label_confidence`` is the probability given to the argmax label.

    Returns:
        ``HxW int64`` refined labels in ``[0, K)`` (all 0 when ``K == 1``).
    """
    s = np.asarray(scores)
    if s.ndim != 3 or s.shape[0] < 1:
        raise ValueError(f"scores must be KxHxW with K >= 1, got shape {s.shape}")
    img = _check_image(image, (s.shape[1], s.shape[2]))
    if s.shape[0] == 1:
        return np.zeros(s.shape[1:], dtype=np.int64)
    labels = np.argmax(s, axis=0)
    q = _infer(img, label_unary(labels, s.shape[0], cfg.label_confidence), cfg)
    return np.argmax(q, axis=0).astype(np.int64)
