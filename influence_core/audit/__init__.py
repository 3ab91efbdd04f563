"""The audit: a session over the durable decision log, the Newton-step unlearning it applies,
the suspect rankings that order the Review queue, and the Review prefetch cache."""
