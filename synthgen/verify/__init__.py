"""Trust but verify (issue 8): re-score a sample of each shard on another worker.

- `tokenstats`: per-token log-prob, top-k membership, expectation under the claimed sampling
- `sample`: the secret random sample of records a check re-scores
- `verdict`: shard-level statistics and the pass/fail decision
- `calibrate`: thresholds from honest runs
- `check`: the worker-side check, verification records and quarantine
"""

from synthgen.verify.sample import choose_sample, sample_size
from synthgen.verify.verdict import Aggregate, Verdict, aggregate, judge

__all__ = ["Aggregate", "Verdict", "aggregate", "choose_sample", "judge", "sample_size"]
