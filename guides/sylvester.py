"""Sylvester normalising flows (van den Berg, Hasenclever, Tomczak & Welling 2018) on a diagonal
Gaussian, with every flow parameter per data point (as ``planar``): the family behind the
``sylvester`` guide.

One step maps z in R^d to

    z' = z + Q R h(R~ Q^T z + b),        h = tanh,

with Q a d x M matrix of orthonormal columns, R and R~ upper triangular M x M and b in R^M.
By Sylvester's determinant identity (Q^T Q = I_M) the Jacobian's determinant is
det(I_M + diag h'(a) R~ R) = prod_i (1 + h'(a_i) r~_ii r_ii), a = R~ Q^T z + b, since
diag(h') R~ R is upper triangular. The step is invertible when r_ii r~_ii > -1 for every i
(h' lies in (0, 1]): the diagonals here are ``DIAG_BOUND * tanh(raw)``, so their product lies in
(-DIAG_BOUND^2, DIAG_BOUND^2), strictly inside (-1, 1) even in floating point (a bare tanh
saturates to 1.0 at |raw| of about 9 in float32, where 1 + h' r r~ could round to 0).

Q is built from H Householder reflections, Q = (H_1 H_2 ... H_H)[:, :M] with
H_j = I - 2 v_j v_j^T / |v_j|^2; it is never formed: Q^T z and Q u are H rank-one updates.
M = d is the paper's Householder Sylvester flow; M < d keeps M orthonormal columns of the same
product, as its orthogonal Sylvester flow keeps M orthonormal columns (obtained there by an
iterative orthogonalisation instead).
"""
import torch
import torch.nn.functional as F

from .flows import FlowFamily, _base_prior, _sample_base

DIAG_BOUND = 0.999  # |r_ii|, |r~_ii| < DIAG_BOUND: 1 + h' r_ii r~_ii >= 1 - DIAG_BOUND^2 (about 0.002)
_PRIOR_RAW_DIAG_TILDE = 0.01  # r~_ii of the prior's parameters: small, non-zero, so that gradients flow


class SylvesterFlowNormal(FlowFamily):
    """K Householder Sylvester steps on a diagonal Gaussian, every parameter per data point.

    z_0 ~ N(loc, diag scale^2); step k: z <- z + Q_k R_k tanh(R~_k Q_k^T z + b_k), with Q_k the
    first M columns of a product of H Householder reflections, R_k and R~_k upper triangular
    (M x M) with diagonals ``DIAG_BOUND * tanh(raw)``; log|det J_k| = sum_i log(1 + tanh'(a_i)
    r_ii r~_ii). Parameters per point: [loc (d), raw scale (d), then per step: R's strictly upper
    part (M(M-1)/2, row by row), R~'s (M(M-1)/2), R's raw diagonal (M), R~'s raw diagonal (M),
    b (M), H Householder vectors (H x d)]: M^2 + 2M + Hd per step.

    Defaults: ``num_steps=4``, ``num_reflections=4``, ``num_columns=min(d, 16)``. Every parameter
    comes from the encoder's head (or the local table), so the vector's length is what sets the
    cost: for the VAE's d = 50 it is 2 * 50 + 4 * (16^2 + 2 * 16 + 4 * 50) = 2052 numbers per
    point, about twice planar's 1110 (10 steps). The full Householder flow (M = d = 50) would
    need 2 * 50 + 4 * (50^2 + 2 * 50 + 4 * 50) = 11300: an encoder head of 2.3 million weights
    on the 200-unit encoder (10 times the encoder itself), 2.2 GB for a local table of 50,000
    points, and a 50 x 50 matrix per particle and step in evaluation. M < d follows the paper's
    orthogonal Sylvester flow, whose Q has M < d orthonormal columns; pass ``num_columns=d`` for
    the paper's Householder flow. The columns come from H reflections of
    e_1..e_M, so with H < M they span a subspace that is at most H dimensions away from
    span(e_1..e_M), rotated per step and per point.

    The steps have no closed-form inverse: like ``planar``, the family scores the values it
    sampled itself (enough for the ELBO, IWAE and training) and refuses others, so DReG, which
    rescores with fixed parameters, does not apply.
    """

    def __init__(self, site, num_steps: int = 4, num_reflections: int = 4, num_columns: int | None = None):
        super().__init__(site)
        d = site.dim
        self.num_columns = min(d, 16) if num_columns is None else num_columns
        if not 1 <= self.num_columns <= d:
            raise ValueError(f"num_columns must be between 1 and the site's dimension {d}, got {self.num_columns}")
        if num_steps < 1 or num_reflections < 1:
            raise ValueError(f"num_steps and num_reflections must be at least 1, got {num_steps}, {num_reflections}")
        self.num_steps = num_steps
        self.num_reflections = num_reflections
        m = self.num_columns
        self.register_buffer("_upper_rows", torch.triu_indices(m, m, 1)[0], persistent=False)
        self.register_buffer("_upper_cols", torch.triu_indices(m, m, 1)[1], persistent=False)

    @property
    def _sizes(self) -> tuple[int, ...]:
        """Lengths of one step's pieces, in their order in the parameter vector."""
        m, d = self.num_columns, self.site.dim
        strict = m * (m - 1) // 2
        return strict, strict, m, m, m, self.num_reflections * d

    @property
    def step_dim(self) -> int:
        return sum(self._sizes)

    @property
    def param_dim(self):
        return 2 * self.site.dim + self.num_steps * self.step_dim

    def prior_params(self):
        """N(0, I): R = 0 makes every step the identity (log|det| = 0); R~'s diagonal is small and
        non-zero, so that R gets gradients (with R = R~ = b = 0 every gradient of the flow vanishes);
        the Householder vectors are e_1, e_2, ... (any non-zero vectors keep Q orthogonal)."""
        d, m = self.site.dim, self.num_columns
        strict, _, _, _, _, _ = self._sizes
        reflections = torch.eye(d)[torch.arange(self.num_reflections) % d].flatten()
        step = torch.cat([torch.zeros(2 * strict + m), torch.full((m,), _PRIOR_RAW_DIAG_TILDE),
                          torch.zeros(m), reflections])
        return torch.cat([_base_prior(d), step.repeat(self.num_steps)])

    def steps(self, params):
        """Every step's pieces, stacked along the step index K: R and R~ (..., K, M, M), the
        Householder unit vectors (..., K, H, d) and b (..., K, M)."""
        d = self.site.dim
        rest = params[..., 2 * d:].unflatten(-1, (self.num_steps, self.step_dim))
        r_upper, rt_upper, r_raw, rt_raw, b, vs = rest.split(self._sizes, dim=-1)
        r = self._triangular(r_upper, r_raw)
        r_tilde = self._triangular(rt_upper, rt_raw)
        vs = vs.unflatten(-1, (self.num_reflections, d))
        units = vs * torch.rsqrt((vs * vs).sum(-1, keepdim=True).clamp(min=1e-30))
        return r, r_tilde, units, b

    def _triangular(self, upper, raw_diag):
        m = self.num_columns
        matrix = upper.new_zeros(upper.shape[:-1] + (m, m))
        matrix[..., self._upper_rows, self._upper_cols] = upper
        return matrix + torch.diag_embed(DIAG_BOUND * torch.tanh(raw_diag))

    @staticmethod
    def _reflect(x, units):
        """H_j x = x - 2 v_j (v_j . x) for unit v_j, applied for j in the order of ``units``'s dim -2."""
        for j in range(units.shape[-2]):
            v = units[..., j, :]
            x = x - 2 * (v * x).sum(-1, keepdim=True) * v
        return x

    def flow(self, params):
        d, m = self.site.dim, self.num_columns
        z, log_q = _sample_base(params, d)
        rs, r_tildes, units, bs = self.steps(params)
        for k in range(self.num_steps):
            r, r_tilde, v, b = rs[..., k, :, :], r_tildes[..., k, :, :], units[..., k, :, :], bs[..., k, :]
            q_t_z = self._reflect(z, v)[..., :m]  # Q^T z = (H_H ... H_1 z)[:M]
            a = (r_tilde * q_t_z.unsqueeze(-2)).sum(-1) + b  # products and sums, not matmul: autocast
            h = torch.tanh(a)                                   # leaves them in the parameters' precision
            r_h = (r * h.unsqueeze(-2)).sum(-1)
            z = z + self._reflect(F.pad(r_h, (0, d - m)), v.flip(-2))  # Q u = H_1 ... H_H [u; 0]
            diag = r.diagonal(dim1=-2, dim2=-1) * r_tilde.diagonal(dim1=-2, dim2=-1)
            log_q = log_q - torch.log1p((1 - h * h) * diag).sum(-1)
        return z, log_q, None
