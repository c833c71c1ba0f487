r"""Sparse autoencoders with TopK sparsity, plain and variational (a Gaussian posterior pulled
toward N(0, 1)).

**Variational SAE** (Baker & Li, "Analysis of Variational Sparse Autoencoders", 2025, arXiv
2509.22994; official code github.com/ZachData/SPAR-Variational-Sparse-Autoencoders,
``dictionary_learning/trainers/vsae_topk.py``):

.. math::
    \mu = \mathrm{ReLU}(W_e x + b_e),\quad \log\sigma^2 = \mathrm{clamp}(V x + c, -6, 2)\ (c_0 = -2),\quad
    z = \mu + \sigma\epsilon\ \text{(training)},\ z = \mu\ \text{(evaluation)},

    \hat x = W_d\, \mathrm{TopK}_{|\cdot|}(z) + b_d,\qquad
    L = \mathrm{mean}_b \|x - \hat x\|^2 + \beta_t \,\mathrm{mean}_b \sum_j KL(\mathcal N(\mu_j, \sigma_j^2) \| \mathcal N(0, 1))
        + \alpha\, L_{aux},

TopK on |z| keeping the sign, the KL over *all* latents (mu clamped to +-10), beta_t ramping
linearly from 0 over the first 10% of steps to ``kl_coefficient`` (500 by the code's default; the
runs behind the paper used 1.0: both documented, 500 the default as the issue asks), and AuxK
(Gao et al. 2024, arXiv 2406.04093): the top ``k_aux`` = d/2 *dead* latents (not fired for
``dead_after`` examples) reconstruct the residual x - x_hat, normalized by its variance,
weight alpha = 1/32. Decoder columns start at norm 0.1 with the encoder tied to them; the
variational SAE does not subtract b_d before encoding nor renormalize its decoder (the code's
"april" mode), while the TopK SAE baseline (Gao et al.) does both.

AuxK and dead latents follow the reference code (``vsae_topk.py`` for the vSAE, ``top_k.py``
for the TopK baseline, same repository):

- the auxiliary reconstruction is decoded *with* the decoder bias for the vSAE (its april-mode
  ``decoder`` is an ``nn.Linear`` with bias: :math:`W_d z_{aux} + b_d`) and without it for the
  TopK baseline (:math:`W_d z_{aux}`, Gao et al.); its normalizer is the residual's variance + 1e-8;
- "fired", per batch: for the vSAE a latent whose (post-TopK, sampled) values sum to > 0 over the
  batch (``sparse_features.sum(0) > 0``); for the TopK baseline a latent among a row's top k
  (even at value 0, as ``did_fire[top_indices] = True``);
- the counters are updated with the current batch *before* the dead latents are read;
- ``dead_after`` counts examples (tokens): the default 10,000,000 is the paper-era code's
  (every commit up to 8e1581a, September 2025, and Gao et al.'s "10M tokens"); the reference's
  HEAD (ad03f7a, October 2025) lowered it to 1,000, which ``dead_after=1000`` reproduces.

Departure: the paper's runs compared a vSAE *without* AuxK against a TopK SAE with it; here both
get AuxK unless ``aux_weight=0``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..divergences import gaussian_kl


def topk_by_magnitude(z: Tensor, k: int) -> Tensor:
    """Keep the ``k`` entries of largest |z| per row (with their signs), zero the rest.

    Example:
        >>> import torch
        >>> topk_by_magnitude(torch.tensor([[0.5, -3.0, 1.0, 2.0]]), 2).tolist()  # |-3| and |2| kept, signs too
        [[0.0, -3.0, 0.0, 2.0]]
    """
    if not 1 <= k <= z.shape[-1]:
        raise ValueError(f"k must be in [1, {z.shape[-1]}], got {k}")
    index = z.abs().topk(k, dim=-1).indices
    return torch.zeros_like(z).scatter(-1, index, z.gather(-1, index))


def auxk_loss(x: Tensor, reconstruction: Tensor, pre_activations: Tensor, dead: Tensor, decoder_weight: Tensor,
              k_aux: int, decoder_bias: Optional[Tensor] = None) -> Tensor:
    r"""AuxK: the top ``k_aux`` dead latents (by |pre-activation|) reconstruct the residual
    e = x - x_hat, :math:`\|e - (W_d z_{aux} + b)\|^2 / (\|e - \bar e\|^2 + 10^{-8})`,
    batch-averaged (both norms), with b = ``decoder_bias`` (the vSAE's code) or none (the TopK
    SAE's); 0 (keeping the graph) when no latent is dead.

    Args:
        x, reconstruction: (B, d). pre_activations: (B, m). dead: (m,) bool. decoder_weight: (d, m).
        k_aux: latents kept. decoder_bias: (d,) or None.

    Example:
        >>> import torch
        >>> x, reconstruction = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.eye(2)  # residual e = I, variance 0.5
        >>> pre, decoder = torch.eye(2), torch.eye(2)  # latent j decodes to basis vector j
        >>> float(auxk_loss(x, reconstruction, pre, torch.tensor([True, True]), decoder, k_aux=2))  # e fully explained
        0.0
        >>> float(auxk_loss(x, reconstruction, pre, torch.tensor([True, False]), decoder, k_aux=2))  # row 2 not: 0.5 / 0.5
        1.0
    """
    if not bool(dead.any()):
        return pre_activations.sum() * 0.0
    residual = (x - reconstruction).detach()
    masked = pre_activations.masked_fill(~dead, 0.0)
    aux = topk_by_magnitude(masked, min(k_aux, int(dead.sum())))
    decoded = aux @ decoder_weight.T + (0.0 if decoder_bias is None else decoder_bias)  # (B, d)
    variance = (residual - residual.mean(0)).pow(2).sum(-1).mean()
    return (residual - decoded).pow(2).sum(-1).mean() / (variance + 1e-8)


class TopKSAE(torch.nn.Module):
    """TopK SAE (Gao et al. 2024): z = TopK(ReLU(W_e (x - b_d) + b_e)), x_hat = W_d z + b_d, unit
    decoder columns (call :meth:`renormalize` after each optimizer step)."""

    variational = False

    def __init__(self, d_model: int, d_latent: int, k: int, *, dead_after: int = 10_000_000):
        super().__init__()
        if not 1 <= k <= d_latent:
            raise ValueError(f"k must be in [1, d_latent={d_latent}], got {k}")
        self.k, self.dead_after = k, dead_after
        decoder = F.normalize(torch.randn(d_model, d_latent), dim=0) * self._decoder_norm()
        self.decoder = torch.nn.Parameter(decoder)  # (d, m)
        self.encoder = torch.nn.Parameter(decoder.T.clone())  # (m, d): tied initialization
        self.encoder_bias = torch.nn.Parameter(torch.zeros(d_latent))
        self.decoder_bias = torch.nn.Parameter(torch.zeros(d_model))
        self.register_buffer("since_fired", torch.zeros(d_latent, dtype=torch.long))

    def _decoder_norm(self) -> float:
        return 1.0

    def pre_activations(self, x: Tensor) -> Tensor:
        return F.relu((x - self.decoder_bias) @ self.encoder.T + self.encoder_bias)

    aux_decoder_bias = False  # AuxK decodes without b_d (Gao et al.; the reference's top_k.py)

    def forward(self, x: Tensor) -> dict:
        mean = self.pre_activations(x)  # (B, m)
        z = topk_by_magnitude(mean, self.k)
        return {"z": z, "pre": mean, "reconstruction": z @ self.decoder.T + self.decoder_bias,
                "fired": self.fired(mean)}

    def fired(self, pre_topk: Tensor) -> Tensor:
        """(m,) bool: the latents among some row's top k (by |value|, even at 0), as ``top_k.py``."""
        index = pre_topk.detach().abs().topk(self.k, dim=-1).indices  # (B, k)
        return torch.zeros(pre_topk.shape[-1], dtype=torch.bool, device=pre_topk.device).index_fill(
            0, index.flatten(), True)

    def dead(self) -> Tensor:
        return self.since_fired >= self.dead_after

    @torch.no_grad()
    def track(self, fired: Tensor, examples: int) -> None:
        """Count examples since each latent last fired (``fired``: (m,) bool, this batch)."""
        self.since_fired += examples
        self.since_fired[fired] = 0

    @torch.no_grad()
    def renormalize(self) -> None:
        self.decoder.data = F.normalize(self.decoder.data, dim=0)


class VariationalSAE(TopKSAE):
    """The variational TopK SAE (see the module docstring); ``learned_variance=False`` fixes
    sigma = 1 and samples nothing (the code's ``var_flag=0``: z = mu, and the KL is 0.5 mu^2)."""

    variational = True

    def __init__(self, d_model: int, d_latent: int, k: int, *, learned_variance: bool = True, dead_after: int = 10_000_000):
        super().__init__(d_model, d_latent, k, dead_after=dead_after)
        self.learned_variance = learned_variance
        if learned_variance:
            self.log_variance_head = torch.nn.Linear(d_model, d_latent)
            torch.nn.init.constant_(self.log_variance_head.bias, -2.0)

    def _decoder_norm(self) -> float:
        return 0.1

    def pre_activations(self, x: Tensor) -> Tensor:  # no b_d subtraction ("april" mode)
        return F.relu(x @ self.encoder.T + self.encoder_bias)

    def forward(self, x: Tensor) -> dict:
        mean = self.pre_activations(x)
        if self.learned_variance:
            log_variance = self.log_variance_head(x).clamp(-6.0, 2.0)
        else:
            log_variance = torch.zeros_like(mean)
        sampled = mean + torch.randn_like(mean) * (0.5 * log_variance).exp() if (
            self.training and self.learned_variance) else mean
        z = topk_by_magnitude(sampled, self.k)
        kl = gaussian_kl(mean.clamp(-10, 10), log_variance).sum(-1)  # (B,) over every latent
        return {"z": z, "pre": sampled, "reconstruction": z @ self.decoder.T + self.decoder_bias, "kl": kl,
                "fired": z.detach().sum(0) > 0}  # vsae_topk.py: the batch sum of the kept values is > 0

    aux_decoder_bias = True  # AuxK decodes with b_d (the april-mode decoder has a bias)

    @torch.no_grad()
    def renormalize(self) -> None:  # the variational SAE keeps its decoder norms
        pass


def sae_loss(model: TopKSAE, x: Tensor, *, step: int, total_steps: int, kl_coefficient: float = 500.0,
             warmup_fraction: float = 0.1, aux_weight: float = 1 / 32, k_aux: int = 0) -> tuple[Tensor, dict]:
    """The training loss of either SAE (reconstruction summed over dimensions, batch-averaged; the
    KL term with its linear warm-up for the variational one; AuxK) and its parts. ``k_aux=0``:
    d_model // 2. Updates the dead-latent counters with this batch first, then reads them (as the
    reference).

    Example:
        >>> import torch
        >>> from divreg.regularizers import VariationalSAE
        >>> _ = torch.manual_seed(0)
        >>> model, x = VariationalSAE(8, 16, k=4), torch.randn(5, 8)
        >>> loss, parts = sae_loss(model, x, step=5, total_steps=100)  # halfway through the warm-up: beta = 500 / 2
        >>> bool(torch.isclose(loss, torch.tensor(parts["reconstruction"] + 250 * parts["kl"] + parts["aux"] / 32)))
        True
    """
    out = model(x)
    reconstruction = (x - out["reconstruction"]).pow(2).sum(-1).mean()
    loss, parts = reconstruction, {"reconstruction": reconstruction.item()}
    if model.variational:
        ramp = min(1.0, step / max(1.0, warmup_fraction * total_steps))
        kl = out["kl"].mean()
        loss = loss + kl_coefficient * ramp * kl
        parts["kl"] = kl.item()
    model.track(out["fired"], x.shape[0])
    if aux_weight > 0:
        aux = auxk_loss(x, out["reconstruction"], out["pre"], model.dead(), model.decoder,
                        k_aux or max(1, x.shape[-1] // 2), model.decoder_bias if model.aux_decoder_bias else None)
        loss = loss + aux_weight * aux
        parts["aux"] = aux.item()
    return loss, parts
