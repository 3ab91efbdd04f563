"""What a served app refuses, so that a crafted link cannot steer the server: paths outside the
roots it was started with, estimators whose cost explodes with model size, and a bind to a
non-loopback address with nobody checking who connects.

Paths. Every path a request names (data root, image folder, checkpoint) is resolved (symlinks
followed, `..` collapsed) and must lie under one of the allowed roots, themselves resolved:
$INFLUENCE_AUDIT_ALLOWED_ROOTS (os.pathsep-separated), else the working directory; the default
data root ($INFLUENCE_AUDIT_DATA) always. The check compares resolved paths and creates nothing.

Cost. The exact Gauss-Newton inverse holds a dense p x p matrix (or, beyond curvature.exact's
DENSE_LIMIT, an NK x p one) and eigendecomposes it: O(p^3). LiSSA runs `depth` Gauss-Newton-vector
products over a mini-batch for every inverse-Hessian-vector product, and a Review card asks for
two of them. Above the limits below both are refused, naming EK-FAC (Kronecker-factored: its
cost grows with the layer widths, not with p^2).

Exposure. The app serves every file and model it can read to whoever connects; bound to a
non-loopback address it needs authentication (Streamlit's st.login, or a proxy in front) or an
explicit opt-in ($INFLUENCE_AUDIT_ALLOW_PUBLIC=1)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from .config import default_data_root

ALLOWED_ROOTS_ENV = "INFLUENCE_AUDIT_ALLOWED_ROOTS"
ALLOW_PUBLIC_ENV = "INFLUENCE_AUDIT_ALLOW_PUBLIC"
EXACT_MAX_PARAMS = 5_000  # exact inverse: dense p x p float64 and its eigh, seconds on 2 cores
LISSA_MAX_WORK = 100_000_000  # LiSSA: parameters x depth (100,000 parameters at depth 1000)
CHEAPER = "ekfac"  # what a refusal suggests


class PathNotAllowedError(ValueError):
    """A path outside the allowed roots."""


class TooCostlyError(ValueError):
    """An estimator refused for this model's size."""


def allowed_roots() -> tuple[Path, ...]:
    """The resolved roots requests may name paths under: $INFLUENCE_AUDIT_ALLOWED_ROOTS
    (os.pathsep-separated), else the working directory; and always the default data root (the
    server's own setting, the sidebar's default)."""
    given = [r for r in os.environ.get(ALLOWED_ROOTS_ENV, "").split(os.pathsep) if r.strip()]
    roots = [*(given or [Path.cwd()]), default_data_root()]
    return tuple(dict.fromkeys(Path(r).expanduser().resolve() for r in roots))


def confine(path: str | Path, what: str = "path",
            roots: tuple[Path, ...] | None = None) -> Path:
    """`path` resolved (symlinks followed; relative to the working directory), if it lies under
    one of `roots` (default allowed_roots()); else PathNotAllowedError naming `what`."""
    roots = allowed_roots() if roots is None else roots
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
        raise PathNotAllowedError(f"{what} {path!s} cannot be resolved: {exc}") from exc
    if not any(resolved.is_relative_to(root) for root in roots):
        raise PathNotAllowedError(
            f"{what} {path!s} is outside the folders this server may read (by default the "
            "working directory and the default data root). To allow it, start the server with "
            f"{ALLOWED_ROOTS_ENV} listing it (folders separated by {os.pathsep!r}).")
    return resolved


def max_params(method: str, lissa_depth: int = 1000) -> int | None:
    """The most tracked parameters a served app fits `method` for (None: no limit)."""
    if method == "exact":
        return EXACT_MAX_PARAMS
    if method == "lissa":
        return LISSA_MAX_WORK // max(lissa_depth, 1)
    return None


def check_cost(method: str, num_params: int, lissa_depth: int = 1000) -> None:
    """TooCostlyError when `method` on a model of `num_params` tracked parameters is above
    max_params (LiSSA at `lissa_depth` recursion steps); the message names a cheaper one."""
    limit = max_params(method, lissa_depth)
    if limit is not None and num_params > limit:
        depth = f" at depth {lissa_depth}" if method == "lissa" else ""
        raise TooCostlyError(
            f"the {method} estimator{depth} is limited to {limit:,} parameters and this model "
            f"has {num_params:,}: choose {CHEAPER} (or kfac), whose cost grows with the layer "
            "widths rather than the parameter count.")


def is_loopback(address: str | None) -> bool:
    """Whether a server bound to `address` is reachable from this machine only ("" and None,
    Streamlit's all-interfaces default, are not)."""
    if not address:
        return False
    if address.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def exposure_refusal(address: str | None, authenticated: bool) -> str | None:
    """Why a server bound to `address` must not serve (None: it may): a non-loopback address
    without authentication (`authenticated`: st.login is configured) and without the opt-in
    $INFLUENCE_AUDIT_ALLOW_PUBLIC=1."""
    if is_loopback(address) or authenticated or os.environ.get(ALLOW_PUBLIC_ENV) == "1":
        return None
    return (f"This server listens on {address or 'every interface'}, so anyone who can reach it "
            "could read its files and run its models, and no login is configured. Serve on "
            "127.0.0.1 (the default), configure st.login (an [auth] section in "
            ".streamlit/secrets.toml) or put an authenticating reverse proxy in front and start "
            f"the server with {ALLOW_PUBLIC_ENV}=1.")
