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

from pyro.distributions.util import scale_and_mask
from pyro.poutine.trace_struct import Trace

from pyro_kr.objective.cost import pushforward_transforms, reference_pairs
from pyro_kr.transforms.score import is_triangular_map, log_density_score

__all__ = ["use_path_gradient"]


def use_path_gradient(guide_trace: Trace) -> None:
    """Rewrite, in place, the entropy term of every ``T#N(0, I)`` site of ``guide_trace``
    (after ``compute_score_parts``) so that its gradient is the path derivative only.

    Sites of other kinds keep their gradient: ``Delta`` sites are functions of the draw (the
    path derivative is their whole gradient); other sampled sites keep Pyro's estimator.

    Raises:
        ValueError: a ``T#N(0, I)`` site whose map is not lower triangular in its coordinate
            order (Pyro's flows, the per-group sites of a subsampled ``structure="plates"``
            guide), naming the site and the fix.
    """
    for name, x, z in reference_pairs(guide_trace):
        site = guide_trace.nodes[name]
        transforms = pushforward_transforms(site)
        if len(transforms) != 1 or not is_triangular_map(transforms[0]):
            kinds = ", ".join(type(t).__name__ for t in transforms)
            raise ValueError(
                f"TransportELBO(gradient='path') needs a lower-triangular map for site "
                f"{name!r}, whose draw is pushed forward by [{kinds}]. It supports AutoKR's "
                "map, dense or structure='plates' without plate subsampling (a subsampled "
                "plate samples the groups at their own site, conditioned on the globals' "
                "draw). Use gradient='reparam' (the default) for this guide."
            )
        _, score = log_density_score(transforms[0], x)
        term = scale_and_mask((score * z).sum(-1), site["scale"], site["mask"])
        parts = site["score_parts"]
        entropy = parts.entropy_term
        site["score_parts"] = parts._replace(
            entropy_term=entropy.detach() + (term - term.detach())
        )
