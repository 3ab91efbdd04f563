"""How good is it: metrics and report files, LDS, mislabel detection, unlearning against
retraining, the baselines run beside ours, the benchmarks, and docs/benchmarks.md."""
