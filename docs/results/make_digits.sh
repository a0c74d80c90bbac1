#!/usr/bin/env bash
# Rebuilds docs/results/digits/* from the runs (see docs/results/digits.md):
#   docs/results/make_digits.sh RUNS_DIR   (RUNS_DIR/<table>/<row>/seed<k>)
# Reports and PNG figures only (SVGs: run the report commands without
# --formats); the PNGs are then shrunk to at most 1400 px wide for the repo.
set -euo pipefail
runs=${1:?usage: $0 RUNS_DIR}
cd "$(dirname "$0")/../.."
out=docs/results/digits
report() {  # experiment workdir outdir [extra flags]
  python -m caat_jax.experiments report "$1" --workdir="$runs/$2" --out="$out/$3" \
    --formats=png "${@:4}"
}
report digits_table6 table6 table6
report digits_noise_diagnostics table6 noise_diagnostics
report digits_table1 table1 table1
report digits_lam_sweep table1 lam_sweep
report digits_table5 table5 table5
report digits_table3 table1 table3 --no_figures
# Long-tailed IF 10 at 200 steps (the registry's setting); the first runs
# at 10 epochs (80 steps, RUNS_DIR/table7) are quoted in digits.md only.
report digits_table7 table7_200 table7
report digits_table9 table7_200 table9
[ -d "$runs/fig14" ] && report digits_fig14 fig14 fig14
[ -d "$runs/table8" ] && report digits_table8 table8 table8
[ -d "$runs/fig15" ] && report digits_fig15 fig15 fig15
# Issue 25's controls (the baselines also trained on the meta set), in the table's workdir.
[ -d "$runs/table6/pgd-at+meta" ] && report digits_table6_controls table6 table6_controls --no_figures
[ -d "$runs/table5/pgd-at+meta" ] && report digits_table5_controls table5 table5_controls --no_figures
[ -d "$runs/table7/pgd-at+meta" ] && report digits_table7_controls table7 table7_controls --no_figures
[ -d "$runs/table8/trades-b6+meta" ] && report digits_table8_controls table8 table8_controls --no_figures \
    --rows=trades-b6,trades-b6+meta,meta-caat-grad-select
# Section 5's input gradients on the control's models (noise.md).
[ -d "$runs/table6/trades-b6+meta" ] && [ -d "$runs/table6/meta-caat-grad-select" ] &&
  (here=$PWD && cd "$runs/table6" && python "$here/docs/results/noise_diagnostics.py" \
    trades-b6/seed{0,1,2} pgd-at/seed{0,1,2} meta-caat-grad/seed{0,1,2} \
    "meta-caat-grad-select/caat.lam=6"/seed{0,1,2} trades-b6+meta/seed{0,1,2} \
    --out="$here/$out/noise_diagnostics/gradients.json")
[ -f "$runs/table6/meta-caat-grad/seed0/eval_autoattack.json" ] &&
  report digits_table6_autoattack table6 table6_autoattack --no_figures \
    --rows=pgd-at,trades-b6,frl-reweight,meta-caat-grad
# Issue 24's outcome: Meta-CAAT trained with each meta-gradient estimator.
[ -d "$runs/meta_variants" ] && report digits_meta_variants meta_variants meta_variants --no_figures
[ -d "$runs/meta_variants_noise" ] &&
  report digits_meta_variants_noise meta_variants_noise meta_variants_noise --no_figures
python - <<'PY'
import glob
from PIL import Image
for p in glob.glob("docs/results/digits/*/figures/*.png"):
  im = Image.open(p)
  s = min(1.0, 1400 / im.size[0])
  im = im.convert("RGB").resize((int(im.size[0] * s), int(im.size[1] * s)), Image.LANCZOS)
  im.quantize(colors=64).save(p, optimize=True)
PY
