"""CAAT's strategy pieces, one idea a module, below the methods that use them.

* ``features``: the six training characteristics of each sample and their
  running statistics (the strategy nets' inputs; docs/method.md §3);
* ``bounds``: per-sample perturbation bounds (fixed, ReMargin, grad-based),
  the anti-adversaries' share of them (§4);
* ``nets``: the weighting net of Meta-CAAT and the policy net of
  Reinforce-CAAT;
* ``objective``: the meta objective on the clean meta batch (§5);
* ``reinforce``: sampling, rewards, baselines and the REINFORCE loss (§6);
* ``fairness``: FRL's Lagrangian multipliers and the epoch hook that updates
  them from validation errors (§7).
"""
