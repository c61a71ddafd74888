"""The LM-prior listener: decode the vector protocol chunk by chunk with a CALM language model as the prior.

Dim letters: B passages, C = L/K chunks, K tokens per chunk, l latent size, d code size, N prior samples.

The vector protocol sends ``code = s P^T (x - m)`` (``protocols.vector``): ``x`` the standardised encoder
means of the C chunks, flattened (``D = C l``), ``P`` the PCA basis (identity without PCA), ``m`` its mean,
``s`` the power scale. Its receiver forms the least-squares code estimate ``c_hat`` (copies combined with
their gains, erasures left out); on a Gaussian channel of noise power ``sigma^2`` code coordinate ``j`` is
then observed with precision ``Q_j = den_j / sigma^2`` (``den_j``: the sum of the squared gains of its
received copies), and the exact log-likelihood of any ``x`` is, up to a constant,

    log p(y | x) = -1/2 sum_j Q_j (s P^T (x - x_hat))_j^2,     x_hat = m + P c_hat / s  (the plain estimate).

Plain decoding decodes ``x_hat`` with the autoencoder. The prior listener (``sequential_decode``) walks the
chunks in order. At chunk ``c`` it has candidates: the plain estimate's chunk ``x_hat_c`` (candidate 0, with
the plain decoding's tokens) and ``N`` chunks proposed by the prior given the tokens decoded so far (the CALM
head's samples, decoded to tokens and re-encoded: exactly the latents a speaker sends for those tokens). Each
candidate is scored by the log-likelihood above with the earlier chunks at the listener's choices and the
later ones at the plain estimate, plus ``weight`` times its log prior probability, estimated by counting
how many of the N samples decode to the same K tokens (add-``smoothing``). Rules:

- ``map``: the argmax of likelihood x prior over all candidates (ties: the plain estimate). The plain
  estimate is a continuous point, the likelihood's maximum: it has absorbed the noise of the ``k_c`` code
  dims that observe chunk c, which a token chunk (even the true one) pays for, ``k_c / 2`` nats on average.
  Its prior term is therefore its token count's log prior minus that Occam penalty ``k_c / 2`` (``k_c``:
  the sum over code coordinates of chunk c's share of each one's energy in ``maps``; ``l`` without PCA,
  ``d / C`` on average with it). With a flat prior (``weight = 0``) the score is the likelihood alone and
  the listener returns plain decoding exactly; at high SNR the likelihood is so sharp that any wrong
  chunk loses by far more than the prior can add, so the listener can only return (nearly) plain decoding.
The later chunks held at the plain estimate make the likelihood exact when every chunk has code dims of its
own (no PCA, ``n >= D``: the chunks' likelihoods factorise). With PCA (``n < D``) it is an approximation:
the later chunks cannot move to explain what a candidate leaves, and the pseudo-inverse's per-chunk
estimate is noisy, so the prior tends to take over there (measured: it then hurts with a weak CALM).

- ``snap``: the sample nearest the received signal (the likelihood's argmax over the samples only, no
  prior weighting, the plain estimate not a candidate): the least-squares estimate snapped onto the prior's
  support.

``lm_prior_decode`` is the glue for a fitted ``VectorProtocol`` and an ``EnergyTransformer`` (agents call it);
``sequential_decode`` is the pure algorithm (numpy, any proposal function). The CALM's state for chunk c is
``EnergyTransformer.hidden``'s h[:, c] (it has read chunks < c), in either layout: after a learned start vector,
or the released CALM's, where chunk 0 is read off a zero input vector and chunk c off chunk c - 1's position.

**The digital link's counterpart** (``token_prior_decode``, the LLM-SC idea): the token ids sent as uncoded BPSK
(``protocols.token.UncodedTokenProtocol``, b bits per id) are decoded token by token with the **token baseline**
(``calm.baseline.TokenTransformer``) as the prior. The soft bits give every id ``v < V`` its exact
log-likelihood ``sum_i (1 - 2 bit_i(v)) LLR_i / 2``; the listener picks ``argmax_v loglik + weight log p_LM(v |
decoded prefix)`` summed over the passage, by beam search (``beam`` hypotheses, 1: greedy) left to right with
a KV cache. The first token has no context: its prior is flat. Positions the budget left unsent get the LM's most
likely token instead of the fixed best guess. With ``weight = 0`` the listener returns plain decoding exactly.

Vocabulary-sized tensors (the autoencoder's logits of the prior's samples, the beam's ``(passages, beam, V)``
scores) are made in pieces of at most ``protocols.latent.MAX_LOGITS`` numbers: at the released CALM's 128,257
ids a whole batch of them would take gigabytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

__all__ = ["PRIOR_RULES", "count_log_prior", "lm_prior_decode", "noise_power", "sequential_decode", "token_log_likelihood",
           "token_prior_decode", "vector_geometry"]

PRIOR_RULES = ("map", "snap")
Rule = Literal["map", "snap"]
#: ``propose(c, prefix (B, c K) decoded token ids) -> (tokens (B, N, K) int, latents (B, N, l) standardised)``
Proposal = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]


def count_log_prior(samples: np.ndarray, queries: np.ndarray, smoothing: float = 0.5) -> np.ndarray:
    """Monte-Carlo log prior of token chunks: ``log((count + smoothing) / (N + smoothing))``.

    Args:
        samples: ``(B, N, K)`` token chunks drawn from the prior.
        queries: ``(B, M, K)`` token chunks to score.
        smoothing: pseudo-count of a chunk never sampled (> 0).

    Returns:
        ``(B, M)`` float64.
    """
    if not smoothing > 0:
        raise ValueError(f"smoothing must be > 0, got {smoothing}")
    counts = (queries[:, :, None, :] == samples[:, None, :, :]).all(-1).sum(-1)  # (B, M)
    return np.log((counts + smoothing) / (samples.shape[1] + smoothing))


def sequential_decode(anchor_latents: np.ndarray, anchor_tokens: np.ndarray, precision: np.ndarray,
                      maps: np.ndarray, propose: Proposal, *, weight: float = 1.0, smoothing: float = 0.5,
                      rule: Rule = "map") -> tuple[np.ndarray, dict[str, float]]:
    """Chunk-by-chunk decoding with a prior (module docstring).

    Args:
        anchor_latents: ``(B, C, l)`` the plain (least-squares) estimate of every chunk's latent, standardised.
        anchor_tokens: ``(B, C, K)`` plain decoding's tokens.
        precision: ``(B, d)`` the precision ``Q_j`` of each code coordinate's estimate (finite, >= 0).
        maps: ``(C, l, d)`` the linear map of each chunk's latent into the code (``code = sum_c x_c @ maps[c]``
            plus a constant).
        propose: the prior's candidates for chunk ``c`` given the decoded prefix (``Proposal``).
        weight: the prior's weight in the score (0: the likelihood alone, i.e. plain decoding under ``map``).
        smoothing: the count prior's pseudo-count.
        rule: ``map`` or ``snap``.

    Returns:
        ``(ids (B, C K) int64, info)``; info: ``changed``, the fraction of chunks whose tokens differ from plain
        decoding.
    """
    if rule not in PRIOR_RULES:
        raise ValueError(f"rule must be one of {PRIOR_RULES}, got {rule!r}")
    if not weight >= 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    B, C, _ = anchor_latents.shape
    K = anchor_tokens.shape[-1]
    if not np.all(np.isfinite(precision)):
        raise ValueError("precision must be finite (a noiseless channel: use plain decoding)")
    out = np.array(anchor_tokens, dtype=np.int64, copy=True)
    resid = np.zeros(precision.shape, dtype=np.float64)  # code deviation of the decoded prefix from x_hat
    rows = np.arange(B)
    # the noise dims the plain estimate of chunk c absorbs: each code coordinate's share of chunk c (sums to d)
    energy = (maps**2).sum(1)  # (C, d)
    dims = (energy / np.maximum(energy.sum(0), 1e-300)).sum(1)  # (C,)
    for c in range(C):
        tokens, latents = propose(c, out[:, :c].reshape(B, c * K))
        cand_tok = np.concatenate([anchor_tokens[:, c : c + 1], tokens], axis=1)  # (B, 1+N, K)
        delta = np.concatenate([np.zeros_like(anchor_latents[:, c : c + 1]),
                                latents - anchor_latents[:, c : c + 1]], axis=1)  # (B, 1+N, l)
        dev = resid[:, None, :] + np.einsum("bnl,ld->bnd", delta, maps[c])  # (B, 1+N, d)
        score = -0.5 * np.einsum("bnd,bd->bn", dev**2, precision)  # log-likelihood up to a constant
        if rule == "map":
            if weight > 0:
                score = score + weight * count_log_prior(tokens, cand_tok, smoothing)
                score[:, 0] -= weight * 0.5 * dims[c]  # the plain estimate's Occam penalty
        else:
            score[:, 0] = -np.inf
        pick = np.argmax(score, axis=1)  # first of ties: the plain estimate
        out[:, c] = cand_tok[rows, pick]
        resid = dev[rows, pick]
    changed = float((out != anchor_tokens).any(-1).mean())
    return out.reshape(B, C * K), {"changed": changed}


def noise_power(channel: Any) -> float:
    """The Gaussian noise power ``sigma^2`` a receiver is told (0 without one; AWGN when ``channel`` is None
    means sigma = 1 as in ``protocols.base``); a chain sums its stages'."""
    if channel is None:
        return 1.0
    if hasattr(channel, "noise_power"):
        return float(channel.noise_power)
    return float(sum(getattr(stage, "noise_power", 0.0) for stage in getattr(channel, "channels", ())))


def vector_geometry(protocol: Any, symbols: np.ndarray, gain: np.ndarray | None,
                    noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The vector protocol's plain estimate and likelihood: ``(anchor_latents (B, C, l) standardised,
    precision (B, d), maps (C, l, d))`` for received ``symbols (B, n)`` with ``noise`` power > 0."""
    from protocols.base import cyclic_sum

    L = protocol._require_fit()
    C, ell, s = L // protocol.K, protocol.latent_dim, protocol.scale
    d = protocol.code_size(L)
    gain = np.ones_like(symbols, dtype=np.float64) if gain is None else np.asarray(gain, dtype=np.float64)
    code = protocol._least_squares(symbols, gain)  # (B, d), what plain decoding decodes
    den = cyclic_sum(gain**2 * (symbols != 0), d)
    basis = protocol.basis
    if basis.uses_pca:
        P = basis.components  # (D, d)
        x = code / s @ P.T + basis.pca_mean
    else:
        P = np.eye(C * ell)
        x = code / s
    return x.reshape(-1, C, ell), den / noise, (s * P).reshape(C, ell, d)


def lm_prior_decode(protocol: Any, lm: Any, symbols: np.ndarray, channel: Any = None, gain: np.ndarray | None = None,
                    *, samples: int = 32, weight: float = 1.0, rule: Rule = "map", smoothing: float = 0.5,
                    seed: int = 0) -> tuple[np.ndarray, dict[str, float]]:
    """Decode a fitted ``VectorProtocol``'s ``symbols (B, n)`` with the CALM ``lm`` (an ``EnergyTransformer`` on
    the protocol's autoencoder) as the prior: ``N = samples`` head samples per chunk given the decoded prefix.
    A noiseless channel (or ``samples = 0``) returns plain decoding. Returns ``(ids (B, L), info)``."""
    import torch

    from protocols.latent import MAX_LOGITS, encode_means

    plain = protocol.decode(symbols, channel=channel, gain=gain)  # (B, L)
    noise = noise_power(channel)
    if noise == 0 or samples == 0:
        return plain, {"changed": 0.0}
    if lm.K != protocol.K or lm.latent_dim != protocol.latent_dim:
        raise ValueError(f"the CALM (K={lm.K}, l={lm.latent_dim}) does not match the protocol's autoencoder "
                         f"(K={protocol.K}, l={protocol.latent_dim})")
    anchor, precision, maps = vector_geometry(protocol, np.asarray(symbols, dtype=np.float64), gain, noise)
    B, C, K = plain.shape[0], anchor.shape[1], protocol.K
    device = next(lm.parameters()).device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    mean, std = protocol.basis.mean, protocol.basis.std

    rows = max(1, MAX_LOGITS // (K * lm.vocab_size))  # samples decoded at once: their logits are (rows K, V)

    def propose(c: int, prefix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.concatenate([prefix, np.zeros((B, K), dtype=np.int64)], axis=1)  # chunk c's slot is not looked at
        with torch.inference_mode():
            h = lm.hidden(torch.as_tensor(ids, device=device))[:, c]  # (B, d_model): predicts chunk c
            z = lm.head.sample(h, samples, generator=generator).reshape(B * samples, -1)  # (B N, l)
            tokens = torch.cat([lm.decode_chunks(z[i: i + rows]) for i in range(0, len(z), rows)])
            tokens = tokens.view(B, samples, K).cpu().numpy()  # (B, N, K)
        mu = encode_means(protocol.autoencoder, tokens.reshape(B * samples, K), batch_size=4096)
        return tokens, ((mu.reshape(B, samples, -1) - mean) / std)

    return sequential_decode(anchor, plain.reshape(B, C, K), precision, maps, propose, weight=weight,
                             smoothing=smoothing, rule=rule)


def token_log_likelihood(protocol: Any, symbols: np.ndarray, channel: Any = None,
                         gain: np.ndarray | None = None) -> np.ndarray:
    """Every id's log-likelihood at every sent position of an ``UncodedTokenProtocol``: ``(B, T, V)`` float64,
    up to a constant per position (``T``: the tokens its budget sends)."""
    llr, signs = _token_llr(protocol, symbols, channel, gain)
    return 0.5 * llr @ signs.T


def _token_llr(protocol: Any, symbols: np.ndarray, channel: Any, gain: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(llr (B, T, b), signs (V, b))``: the combined LLR of every sent bit (> 0: bit 0, i.e. +1, more likely)
    and every id's bits as signs (+1 for a 0 bit); id v's log-likelihood at position t is
    ``0.5 * llr[:, t] @ signs[v]``."""
    y = protocol._check_symbols(symbols)
    g = protocol._check_gain(gain, y.shape)
    L = protocol._require_fit()
    T, b, V = protocol.tokens_sent(L), protocol.bits, protocol.vocab_size
    llr = protocol._llr(y, channel, g).reshape(y.shape[0], T, b)
    signs = 1.0 - 2.0 * protocol.token_bits(np.arange(V, dtype=np.int64)[:, None])  # (V, b)
    return llr, signs


def token_prior_decode(protocol: Any, lm: Any, symbols: np.ndarray, channel: Any = None,
                       gain: np.ndarray | None = None, *, weight: float = 1.0, beam: int = 4) -> np.ndarray:
    """Decode an ``UncodedTokenProtocol``'s ``symbols (B, n)`` with the token baseline ``lm`` (``TokenTransformer``)
    as the prior (module docstring): beam search of width ``beam`` (1: greedy) over
    ``sum_t loglik_t + weight log p_LM``, with a KV cache. Returns ids ``(B, L)``.
    ``weight = 0`` or a noiseless channel: plain decoding. Passages are searched in groups whose
    ``(group, beam, V)`` scores hold at most ``MAX_LOGITS`` numbers; each id's likelihood is formed per position."""
    from protocols.latent import MAX_LOGITS

    if not (np.isfinite(weight) and weight >= 0):
        raise ValueError(f"weight must be finite and >= 0, got {weight}")
    if not (isinstance(beam, int) and beam >= 1):
        raise ValueError(f"beam must be an integer >= 1, got {beam!r}")
    plain = protocol.decode(symbols, channel=channel, gain=gain)
    if weight == 0 or noise_power(channel) == 0:
        return plain
    if lm.config.vocab_size != protocol.vocab_size:
        raise ValueError(f"the token LM's vocabulary ({lm.config.vocab_size}) is not the protocol's "
                         f"({protocol.vocab_size})")
    B, L = plain.shape
    if L > lm.config.max_positions:
        raise ValueError(f"passages of {L} tokens exceed the token LM's max_positions {lm.config.max_positions}")
    if B == 0:
        return plain
    llr, signs = _token_llr(protocol, symbols, channel, gain)
    W = min(beam, protocol.vocab_size)
    rows = max(1, MAX_LOGITS // (W * protocol.vocab_size))
    return np.concatenate([_beam_search(lm, llr[i: i + rows], signs, plain[i: i + rows], weight, W)
                           for i in range(0, B, rows)])


def _beam_search(lm: Any, llr: np.ndarray, signs: np.ndarray, plain: np.ndarray, weight: float, W: int) -> np.ndarray:
    """``token_prior_decode``'s beam search over passages ``plain (B, L)`` (the plain decoding) with the sent bits'
    LLRs ``llr (B, T, b)`` and the ids' ``signs (V, b)``: ids ``(B, L)``."""
    import torch

    B, L = plain.shape
    T, V = llr.shape[1], signs.shape[0]
    device = next(lm.parameters()).device
    signs_t = torch.as_tensor(signs.T)  # (b, V) float64

    def loglik(t: int) -> torch.Tensor:  # (B, V): every id's log-likelihood at sent position t
        return 0.5 * torch.as_tensor(llr[:, t]) @ signs_t

    scores = torch.full((B, W), -math.inf, dtype=torch.float64)
    scores[:, 0] = 0.0  # one live beam to start: the others would duplicate it
    seqs = torch.zeros((B, W, 0), dtype=torch.int64)
    rows = torch.arange(B)[:, None]
    with torch.inference_mode():
        cache = lm.backbone.new_cache(B * W, L)
        for t in range(L):
            if t == 0:  # no context: a flat prior (the unsent first token: the fixed best guess)
                step = (loglik(0) if T else torch.nn.functional.one_hot(torch.as_tensor(plain[:, 0]), V).log()
                        .double())[:, None].expand(B, W, V)
            else:
                h = lm.backbone(lm.embed(seqs[:, :, -1].reshape(B * W, 1).to(device)), cache)[:, -1]
                step = weight * torch.log_softmax(lm.lm_head(h).double(), dim=-1).cpu().view(B, W, V)
                if t < T:
                    step = step + loglik(t)[:, None]
            top = (scores[:, :, None] + step).view(B, W * V).topk(W, dim=-1)
            parent, token = top.indices // V, top.indices % V
            scores, seqs = top.values, torch.cat([seqs[rows, parent], token[:, :, None]], dim=-1)
            if t + 1 < L:
                cache.reorder((rows * W + parent).reshape(-1).to(device))
    return seqs[torch.arange(B), scores.argmax(-1)].numpy().astype(np.int64)
