"""Is WiSE-FT's dip on clip-offline caused by interpolated BatchNorm running statistics?

Usage: python scripts/clip_bn_probe.py DB OUT.json [SEED]   (docs/tasks_clip.md has its table)

One ``finetune+wise-ft`` run of ``clip-offline``; in WiSE-FT's finalize every alpha is
evaluated with four choices of BatchNorm running statistics, the weights interpolated:
  interp - every float entry interpolated (what wise-ft does by default)
  bn0    - the statistics of theta0 (f0, the prior images)
  bnft   - the statistics of theta_ft (the fine-tuned model, the new images)
  recal  - re-estimated on 640 new-task training images (wise-ft's bn_stats=recompute)
"""

import json
import sys

import forgetbench_plugins.wise_ft as wise_ft
from forgetbench import runner
from forgetbench.api import Split

STASH = {}
_loaded = runner.loaded_data


def loaded_data(task, ctx):
    out = _loaded(task, ctx)
    STASH["data"], STASH["ctx"] = out[0], ctx
    return out


def recalibrate(model, ctx, data, n=640):
    split = Split("new_recal", data.new_train.examples[:n])
    batches = ctx.batches(split, batch_size=32)
    wise_ft.recompute_bn_stats(model, batches, lambda batch: ctx.forward(model, batch))


def finalize(self, model, evaluate):
    theta_ft = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stats = {k for k in theta_ft if k.endswith(("running_mean", "running_var"))}
    out = {}
    for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
        mix = wise_ft.interpolate(self.theta0, theta_ft, alpha)
        for mode in ("interp", "bn0", "bnft", "recal"):
            if alpha in (0.0, 1.0) and mode in ("bn0", "bnft"):
                continue
            state = dict(mix)
            if mode == "bn0":
                state.update({k: self.theta0[k] for k in stats})
            if mode == "bnft":
                state.update({k: theta_ft[k] for k in stats})
            model.load_state_dict(state)
            if mode == "recal":
                recalibrate(model, STASH["ctx"], STASH["data"])
            result = evaluate(model)
            out[f"{alpha}/{mode}"] = result
            shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(result.items()) if "accuracy" in k)
            print(f"alpha {alpha} {mode:6s} {shown}", flush=True)
    with open(sys.argv[2], "w") as handle:
        json.dump(out, handle, indent=1)
    model.load_state_dict(theta_ft)
    return model


if __name__ == "__main__":
    runner.loaded_data = loaded_data
    wise_ft.WiseFT.forgetbench_finalize = wise_ft.hookimpl(finalize)
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    request = runner.RunRequest(task="clip-offline", methods=["finetune", "wise-ft"], seed=seed)
    print("run", runner.execute(request, db=sys.argv[1]))
