"""Imported by the reward workers' fork server: load once what every worker would load.

math-verify with sympy (about 2 s), langdetect's language profiles (1 s) and
the Punkt model; forked workers then start warm. Failures are ignored: a
worker loads what it needs on first use anyway.
"""

import rewards  # noqa: F401  (registers the built-in verifiers)

try:
    from rewards import ifeval_text, math as _math

    _math.equivalent("x^2", "x*x")
    ifeval_text.detect_language("warm up the language profiles")
    ifeval_text.count_sentences("One. Two.")
except Exception:  # pragma: no cover - a missing optional library only costs a slower first call
    pass
