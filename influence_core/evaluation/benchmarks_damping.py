"""The docs/benchmarks.md section of `calibrate`: per problem, the damping the rule chose for each
edit kind (or that the step is skipped for it) and the ratio KL(nothing) / KL(step) to real
retraining on every damping of the grid, from docs/reports/damping_<dataset>_<model>.json."""

from __future__ import annotations

from .benchmarks_doc import CLI, Reports, cmd, num, table

REPORTS = ("damping_digits_mlp.json", "damping_mnist_cnn.json", "damping_fashion_mnist_cnn.json")


def _command(x: dict) -> str:
    root = "" if x["dataset"] == "digits" else " --data-root <data>"
    return cmd(f"{CLI} calibrate --dataset {x['dataset']} --model {x['model']}{root} "
               f"--out docs/reports/damping_{x['dataset']}_{x['model']}.json")


def damping(r: Reports) -> str:
    runs = [(name, r(name)) for name in REPORTS if (r.folder / name).exists()]
    if not runs:
        return "No calibration report yet."
    grid = [float(c) for c in runs[0][1]["grid"]]
    head = ("The Newton step's damping is chosen per problem and per edit kind by "
            "`calibrate` (influence_core/audit/damping.py): two held-out edit sets per kind (the "
            "2% highest-loss training points and a random 2% removed; the 2% highest-loss and "
            "the next 2% relabelled to the model's most probable other class), each retrained "
            "for real with the model's seed, init and batch order; for each damping "
            "λ = c × the weight decay on the grid, the geometric mean over the two sets of "
            "KL(retrained ‖ unchanged model) / KL(retrained ‖ stepped model) on the test split "
            "(above 1: the step moved the model toward retraining). Each kind takes the best c; "
            "a kind whose best ratio is not above 1 gets no step (its decisions are logged, the "
            "model stays). The app and `unlearn` use the model's calibration when it exists.")
    rows = []
    for name, x in runs:
        for kind in ("remove", "relabel"):
            k = x["kinds"][kind]
            chosen = f"c = {num(k['multiple'], 0)}" if k["used"] else "**skipped**"
            rows.append([f"{x['dataset']}/{x['model']} ({num(x['num_train'])} images)", kind,
                         chosen] + [num(k["ratios"][str(c)], 3) for c in grid]
                        + [r.link(name), _command(x)])
    body = table(["problem", "edit kind", "chosen"] + [f"c = {num(c, 0)}" for c in grid]
                 + ["report", "command"], rows)
    weak = [f"{x['dataset']}/{x['model']} {kind} ({num(x['kinds'][kind]['ratio'], 3)})"
            for _, x in runs for kind in ("remove", "relabel")
            if x["kinds"][kind]["used"] and x["kinds"][kind]["ratio"] < 1.1]
    prose = ("What speaks against it: each choice rests on two edit sets of one seed, and the "
             "grid's small multiples make the step far worse than doing nothing everywhere "
             "(ratios well below 1), which is why a fixed small damping is unsafe. "
             + (f"Where the best step is less than 10% closer to retraining than doing nothing "
                f"({', '.join(weak)}), the step is kept by the rule but is nearly a no-op: "
                f"for those problems the retrain between cleaning rounds, not the Newton "
                f"step, is what moves the model." if weak else ""))
    return "\n\n".join([head, body, prose])
