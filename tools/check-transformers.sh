#!/usr/bin/env bash
# Test kosmos-demo against one transformers release, in a throwaway venv of its own.
#
#   tools/check-transformers.sh VERSION [--venv DIR] [--install-only]
#
# Builds a plain venv (no system site-packages, so no other transformers leaks in),
# installs requirements.txt + requirements-test.txt with their transformers line left
# out, then transformers==VERSION. If VERSION's own dependencies cannot be installed,
# it is installed --no-deps and the run goes on; `pip check` is printed either way, so
# a new hard dependency shows the day it appears. Then it runs the engine, attention,
# loading and app tests and prints one line: "VERDICT: transformers VERSION: ...".
# pip's cache is reused (nothing is downloaded twice). --venv DIR keeps the venv in
# DIR (reused when it is there); without it the venv is deleted at the end.
# Before raising the cap in requirements.txt and pyproject.toml, this must say PASS.
set -uo pipefail

usage() { echo "usage: $0 VERSION [--venv DIR] [--install-only]" >&2; exit 2; }
[[ $# -ge 1 && $1 =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?([a-z0-9.]*)?$ ]] || usage
version=$1; shift
venv="" install_only=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --venv) [[ $# -ge 2 ]] || usage; venv=$2; shift 2 ;;
    --install-only) install_only=1; shift ;;
    *) usage ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
tests=(tests/test_engine.py tests/test_attention_canaries.py tests/test_load_failures.py tests/test_checkpoints.py
       tests/test_app.py kosmos_demo/compat.py kosmos_demo/attention.py)

if [[ -z $venv ]]; then
  venv=$(mktemp -d "${TMPDIR:-/tmp}/kosmos-transformers-$version.XXXXXX")
  trap 'rm -rf "$venv"' EXIT
fi
verdict() { echo "VERDICT: transformers $version: $*"; }
py=$venv/bin/python
notes=""

if [[ ! -x $py ]]; then
  echo "--- venv $venv"
  "${PYTHON:-python3}" -m venv "$venv" || { verdict "FAIL (could not make a venv)"; exit 1; }
fi
requirements=$venv/requirements-without-transformers.txt
grep -hv -e '^-r ' -e '^transformers' "$root/requirements.txt" "$root/requirements-test.txt" >"$requirements"
echo "--- pip install the project's requirements (transformers left out)"
"$py" -m pip install -q --disable-pip-version-check -r "$requirements" \
  || { verdict "FAIL (the project's own requirements do not install)"; exit 1; }
echo "--- pip install transformers==$version"
if ! "$py" -m pip install -q --disable-pip-version-check "transformers==$version"; then
  echo "--- transformers $version's dependencies do not install here: installing it --no-deps"
  "$py" -m pip install -q --disable-pip-version-check --no-deps "transformers==$version" \
    || { verdict "FAIL (transformers==$version does not install)"; exit 1; }
  notes+=", installed --no-deps"
fi
echo "--- pip check"
if check=$("$py" -m pip check 2>&1); then
  echo "$check"
else
  echo "$check"
  notes+=", pip check: $(echo "$check" | grep -c .) problem(s)"
fi
installed=$("$py" -c 'import transformers; print(transformers.__version__)') \
  || { verdict "FAIL (transformers does not import$notes)"; exit 1; }
[[ $installed == "$version"* ]] || { verdict "FAIL (asked for $version, got $installed)"; exit 1; }
[[ $install_only == 1 ]] && { echo "--- installed transformers $installed in $venv"; exit 0; }

echo "--- pytest ${tests[*]}"
cd "$root"
log=$venv/pytest.log
HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False "$py" -m pytest -q -p no:cacheprovider "${tests[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
summary=$(grep -E '^=*\s*[0-9]+ (passed|failed|error)' "$log" | tail -1 | sed -E 's/^=+ //; s/ =+$//')
if [[ $status == 0 ]]; then
  verdict "PASS (${summary:-no summary}$notes)"
else
  verdict "FAIL (${summary:-pytest exited $status}$notes)"
fi
exit "$status"
