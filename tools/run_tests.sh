#!/usr/bin/env bash
# The test suite, DDS isolated. pytest's "no tests collected" (exit 5) is a failure.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/isolated.sh" python -m pytest test "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run_tests: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
