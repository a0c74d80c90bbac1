"""The four data models of Section 3 (Eqs. 3, 6, 11, 17): parameters, sampling, densities.

Every model has class means on the diagonal direction: x | y ~ (y * eta * 1_d) plus
noise. All the paper's optimal linear classifiers take w along 1_d (see exact.py),
so each model is also described by its 1-D projection

  t = <x, 1_d> / sqrt(d),

on which class y has mean y * sqrt(d) * eta and standard deviation sigma_y, and an
l_inf perturbation of radius r moves t by at most r * sqrt(d) (= r * ||1_d||_1 /
||1_d||_2). The projection is what the closed forms (closed_form.py) and the exact
threshold search (exact.py) work with; `sample` draws full d-dimensional points
for the simulation (simulate.py).

Groups. A "group" is a set of samples that share one signed perturbation bound:
class -1 and class +1 for the variance, imbalance and skew cases; for the noise
case (Eq. 11) class -1, clean class +1 and noisy class +1 (the samples whose true
label y~ = -1 was flipped to +1; Eq. 11 draws x from N(y theta) with the *observed*
y, so they sit in the +1 cluster). Arrays over groups are ordered as in
`group_names`.
"""

import dataclasses

import numpy as np
from scipy import special, stats

CASES = ("variance", "imbalance", "noise", "skew")


@dataclasses.dataclass(frozen=True)
class Model:
  """One of the paper's data distributions.

  Attributes:
    case: 'variance' (Eq. 3), 'imbalance' (Eq. 6), 'noise' (Eq. 11), 'skew' (Eq. 17).
    d: input dimension (the skew case is one-dimensional, d = 1).
    eta: mean magnitude per coordinate, theta = (eta, ..., eta), eta > 0.
    sigma: standard deviation of class -1 (of both classes except in Eq. 3).
    K: sigma_{+1} / sigma_{-1} (Eq. 3), K >= 1.
    V: p_- / p_+ (Eq. 6), V >= 1.
    p: flip rate of true class -1 into label +1 (Eq. 11), 0 <= p < 1.
    alpha: skew coefficient of class +1 (Eq. 17).
  """

  case: str
  d: int = 1
  eta: float = 2.0
  sigma: float = 1.0
  K: float = 1.0
  V: float = 1.0
  p: float = 0.0
  alpha: float = 0.0

  def __post_init__(self):
    if self.case not in CASES:
      raise ValueError(f"case must be one of {CASES}, got {self.case!r}")
    if self.case == "skew" and self.d != 1:
      raise ValueError("the skew case (Eq. 17) is one-dimensional: d must be 1")

  @property
  def group_names(self) -> tuple[str, ...]:
    if self.case == "noise":
      return ("class -1", "class +1 clean", "class +1 noisy")
    return ("class -1", "class +1")

  @property
  def group_label(self) -> np.ndarray:
    """Observed label of each group, [G]."""
    return np.array([-1, 1, 1]) if self.case == "noise" else np.array([-1, 1])

  @property
  def group_prob(self) -> np.ndarray:
    """Probability of each group, [G] (sums to 1)."""
    if self.case == "imbalance":
      return np.array([self.V, 1.0]) / (1.0 + self.V)
    if self.case == "noise":
      # y~ uniform; y~ = -1 keeps its label w.p. 1 - p (Eq. 11).
      return np.array([(1 - self.p) / 2, 0.5, self.p / 2])
    return np.array([0.5, 0.5])

  @property
  def group_std(self) -> np.ndarray:
    """Std of the projection t in each group, [G]."""
    if self.case == "variance":
      return np.array([self.sigma, self.K * self.sigma])
    return np.full(len(self.group_names), self.sigma)

  @property
  def mu(self) -> float:
    """|mean| of the projection t, sqrt(d) * eta."""
    return np.sqrt(self.d) * self.eta

  def class_prob(self) -> np.ndarray:
    """P(y = -1), P(y = +1), [2]."""
    g = self.group_prob
    return np.array([g[0], g[1:].sum()])

  def group_cdf(self, t) -> np.ndarray:
    """P(T <= t_g | group g) for the projection T; t: [..., G] (or [..., 1]) -> [..., G]."""
    t = np.asarray(t, np.float64)
    if self.case == "skew":
      t = np.broadcast_to(t, t.shape[:-1] + (2,))
      return np.stack(
        [
          special.ndtr((t[..., 0] + self.mu) / self.sigma),
          skew_cdf(t[..., 1], self.eta, self.sigma, self.alpha),
        ],
        -1,
      )
    return special.ndtr((t - self.group_label * self.mu) / self.group_std)

  def group_sf(self, t) -> np.ndarray:
    """P(T > t_g | group g), computed without cancellation; [..., G] -> [..., G]."""
    t = np.asarray(t, np.float64)
    if self.case == "skew":
      t = np.broadcast_to(t, t.shape[:-1] + (2,))
      return np.stack(
        [
          special.ndtr(-(t[..., 0] + self.mu) / self.sigma),
          1.0 - skew_cdf(t[..., 1], self.eta, self.sigma, self.alpha),
        ],
        -1,
      )
    return special.ndtr(-(t - self.group_label * self.mu) / self.group_std)

  def group_pdf(self, t) -> np.ndarray:
    """Density of T in group g at t_g; t: [..., G] (or [..., 1]) -> [..., G]."""
    t = np.asarray(t, np.float64)
    if self.case == "skew":
      t = np.broadcast_to(t, t.shape[:-1] + (2,))
      return np.stack(
        [
          stats.norm.pdf(t[..., 0], -self.mu, self.sigma),
          skew_pdf(t[..., 1], self.eta, self.sigma, self.alpha),
        ],
        -1,
      )
    return stats.norm.pdf(t, self.group_label * self.mu, self.group_std)

  def pdf(self, x: np.ndarray) -> np.ndarray:
    """Joint density p(x, y) of full inputs; x: [N, d] -> [N, 2] (y = -1, +1)."""
    x = np.asarray(x, np.float64)
    if self.case == "skew":
      dens = self.group_pdf(x[:, :1])
    else:
      theta = np.full(self.d, self.eta)
      dens = np.stack(
        [
          stats.multivariate_normal.pdf(x, y * theta, s**2 * np.eye(self.d)).reshape(-1)
          for y, s in zip(self.group_label, self.group_std)
        ],
        -1,
      )
    joint = dens * self.group_prob
    return np.stack([joint[:, 0], joint[:, 1:].sum(-1)], -1)

  def sample(self, n: int, rng: np.random.Generator):
    """Draws n samples.

    Returns:
      x: [n, d] float64 inputs; y: [n] labels in {-1, +1}; group: [n] group index.
    """
    group = rng.choice(len(self.group_names), size=n, p=self.group_prob)
    y = self.group_label[group]
    if self.case == "skew":
      x = np.where(
        y < 0,
        rng.normal(-self.eta, self.sigma, n),
        skew_sample(n, self.eta, self.sigma, self.alpha, rng),
      )[:, None]
      return x, y, group
    std = self.group_std[group][:, None]
    x = y[:, None] * self.eta + std * rng.standard_normal((n, self.d))
    return x, y, group


# The skew normal SN(theta, sigma^2, alpha) of Azzalini (the paper's ref. [38]):
#   f(x) = (2 / sigma) phi((x - theta) / sigma) Phi(alpha (x - theta) / sigma).
# The paper's printed density (Sec. 3.5) drops the 1 / sigma factors; they agree for
# sigma = 1, the only value its figures use.
def skew_pdf(x, theta: float, sigma: float, alpha: float) -> np.ndarray:
  return stats.skewnorm.pdf(x, alpha, loc=theta, scale=sigma)


def skew_cdf(x, theta: float, sigma: float, alpha: float) -> np.ndarray:
  """CDF of SN via Owen's T: F(z) = Phi(z) - 2 T(z, alpha), z = (x - theta) / sigma."""
  z = (np.asarray(x, np.float64) - theta) / sigma
  return special.ndtr(z) - 2.0 * special.owens_t(z, alpha)


def skew_sample(
  n: int, theta: float, sigma: float, alpha: float, rng: np.random.Generator
) -> np.ndarray:
  """Draws SN samples by the stochastic representation z = delta |u0| + sqrt(1 - delta^2) u1."""
  delta = alpha / np.sqrt(1.0 + alpha**2)
  u0, u1 = rng.standard_normal((2, n))
  return theta + sigma * (delta * np.abs(u0) + np.sqrt(1.0 - delta**2) * u1)
