"""The path-derivative ("sticking the landing") gradient of the guide's log-density.

The reparameterized gradient of ``E_x[log q_phi(T_phi(x))]`` has two parts: the path through
the draw ``z = T_phi(x)``, and the score term ``grad_phi log q_phi(z)`` at fixed ``z``. The
second has expectation zero, so dropping it keeps the gradient unbiased; its variance does not
vanish at the optimum, while that of the rest does where ``q`` equals the target (Roeder, Wu
and Duvenaud 2017). For ``q = T#N(0, I)`` the path term is ``score(z) . dz/dphi`` with the
score ``grad_z log q(z)`` of :func:`pyro_kr.transforms.score.log_density_score`, so the
surrogate below replaces the guide site's entropy term by ``score.detach() . z``, keeping its
value.
"""

from __future__ import annotations

import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.trace_struct import Trace

from pyro_kr.objective.cost import pushforward_transforms, reference_pairs
from pyro_kr.transforms.score import (
    is_triangular_map,
    log_density_score,
    transposed_jacobian_solve,
)

__all__ = ["use_path_gradient"]


def use_path_gradient(guide_trace: Trace) -> None:
    """Rewrite, in place, the entropy term of every ``T#N(0, I)`` site of ``guide_trace``
    (after ``compute_score_parts``) so that its gradient is the path derivative only.

    Under plate subsampling the sparse ``AutoKR`` samples the drawn groups at a site of their
    own (``infer["kr_globals"]`` names the globals' site they are conditioned on); the groups'
    log-density, scaled by Pyro's ``N / B``, also depends on the globals' draw, so its share
    of the globals' score is added to the globals' site
    (:func:`~pyro_kr.transforms.score.conditional_block_score`).

    Sites of other kinds keep their gradient: ``Delta`` sites are functions of the draw (the
    path derivative is their whole gradient); other sampled sites keep Pyro's estimator.

    Raises:
        ValueError: a ``T#N(0, I)`` site whose map is not lower triangular in its coordinate
            order (Pyro's flows), naming the site and the fix.
    """
    pairs = reference_pairs(guide_trace)
    correction: dict[str, torch.Tensor] = {}  # globals' site -> v of its groups' sites
    for name, x, z in pairs:
        site = guide_trace.nodes[name]
        transforms = pushforward_transforms(site)
        globals_site = site["infer"].get("kr_globals")
        if globals_site is None:
            continue
        score_of = getattr(transforms[0], "conditional_score", None)
        if len(transforms) != 1 or score_of is None or globals_site not in guide_trace.nodes:
            raise ValueError(
                f"site {name!r} is marked as the groups of {globals_site!r} "
                "(infer['kr_globals']) but is not the sparse AutoKR's conditional map of "
                "them; the path gradient cannot score it. Use gradient='reparam'."
            )
        weight = scale_and_mask(z.new_ones(z.shape[:-1]), site["scale"], site["mask"])
        _, score, v = score_of(x, weight)
        correction[globals_site] = correction.get(globals_site, 0.0) + v
        _path_entropy(site, scale_and_mask((score * z).sum(-1), site["scale"], site["mask"]))
    for name, x, z in pairs:
        site = guide_trace.nodes[name]
        if site["infer"].get("kr_globals") is not None:
            continue
        transforms = pushforward_transforms(site)
        if len(transforms) != 1 or not is_triangular_map(transforms[0]):
            kinds = ", ".join(type(t).__name__ for t in transforms)
            raise ValueError(
                f"TransportELBO(gradient='path') needs a lower-triangular map for site "
                f"{name!r}, whose draw is pushed forward by [{kinds}]. It supports AutoKR's "
                "map, dense or structure='plates' (with or without plate subsampling). Use "
                "gradient='reparam' (the default) for this guide."
            )
        _, score = log_density_score(transforms[0], x)
        term = scale_and_mask((score * z).sum(-1), site["scale"], site["mask"])
        if name in correction:
            # the groups' share, already weighted by their own scale and mask
            shift = transposed_jacobian_solve(transforms[0], x, correction[name])
            term = term - (shift * z).sum(-1)
        _path_entropy(site, term)


def _path_entropy(site: dict, term: torch.Tensor) -> None:
    """Replace the site's entropy term by its value with the gradient of ``term``."""
    parts = site["score_parts"]
    site["score_parts"] = parts._replace(
        entropy_term=parts.entropy_term.detach() + (term - term.detach())
    )
