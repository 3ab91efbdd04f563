"""The docs/benchmarks.md section of `evaluate suspects`: the suspect rankings and suggestion
rules on the development split (where the default is chosen) and the test split (where it is
reported), from docs/reports/suspects_dev.json and suspects_test.json when they exist."""

from __future__ import annotations

from .benchmarks_doc import CLI, Reports, cmd, num, table

SHOWN = ["cv_loss+checkpoint_loss", "cleanlab", "loss", "self_influence", "aum",
         "dynamics_loss", "classnorm:aum", "forgetting", "checkpoint_loss"]


def _split(r: Reports, name: str) -> str:
    x = r(name)
    means = x["overall"]
    rows = [[f"`{n}`" + (" (default)" if n == x["default"] else ""), num(means[n], 3)]
            for n in sorted(means, key=lambda n: -means[n]) if n in SHOWN or n == x["default"]
            or n == x.get("chosen")]
    sug = x["suggestion_overall"]
    rules = [[f"`{k}`", num(v, 3)] for k, v in sorted(sug.items(), key=lambda kv: -kv[1])]
    command = cmd(f"{CLI} evaluate suspects --split {x['split']}")
    head = (f"**{x['split']} split** ({r.link(name)}): {num(x['n_runs'])} of "
            f"{num(x['planned_runs'])} planned runs, {command}. "
            "Fraction of flips found at 10% inspected, mean over the runs:")
    parts = [head, table(["ranking", "found"], rows)]
    if x.get("chosen"):
        parts.append(f"Best candidate on this split: `{x['chosen']}`.")
    if "goal" in x:
        g = x["goal"]
        parts.append(f"Default at least as good as the best of cleanlab, training loss and "
                     f"Kronfluence self-influence in {num(g['met'])} of {num(g['of'])} "
                     "settings.")
    parts += ["Suggested label right on the flipped examples, per rule (mean over runs):",
              table(["rule", "right"], rules)]
    return "\n\n".join(parts)


def suspects(r: Reports) -> str:
    present = [n for n in ("suspects_dev.json", "suspects_test.json")
               if (r.folder / n).is_file()]
    intro = ("Candidates are chosen on the development split (digits/mlp, and mnist/mlp on a "
             "seeded subset) and reported on the test split (mnist/cnn and fashion_mnist/cnn "
             "on seeded subsets, other noise seeds), for each noise kind (uniform, pair, "
             "instance), rate and regime asked for; the reports list their runs.")
    if "suspects_test.json" not in present:
        intro += " The test split has not been run yet: no held-out number exists."
    return "\n\n".join([intro] + [_split(r, n) for n in present])
