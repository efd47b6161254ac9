#!/usr/bin/env bash
# Checks the SAM template offline; exits non-zero on any finding.
#
#   deploy/validate.sh [TEMPLATE]     check TEMPLATE (default: deploy/template.yaml)
#   deploy/validate.sh --self-test    prove the check catches broken templates
#
# 1. cfn-lint on the SAM source (parameters, conditions, rules, plain resources);
# 2. aws-sam-translator turns it into the CloudFormation that SAM would deploy (deploy/translate.py:
#    no AWS call, placeholder CodeUri, empty managed-policy map);
# 3. cfn-lint on that output. cfn-lint alone does not expand SAM resources, so a bad runtime, a
#    1,200 s timeout or a batch size of 20,000 on a function passes step 1; step 3 catches them.
#
# Tools (pinned in .ci/requirements.txt) come from the venv that .ci/run installs:
# $FLUXCB_VENV, default ~/.cache/fluxcb/venv. Findings of every level (error, warning,
# informational) fail the check; to accept one, add a cfn-lint `Metadata` ignore with a reason.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${FLUXCB_VENV:-$HOME/.cache/fluxcb/venv}"
region="${FLUXCB_VALIDATE_REGION:-us-east-1}"
py="$venv/bin/python"
cfn_lint="$venv/bin/cfn-lint"
keep_translated=1
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

if ! [ -x "$py" ] || ! [ -x "$cfn_lint" ] || ! "$py" -c 'import samtranslator' 2>/dev/null; then
  echo "validate: aws-sam-translator and cfn-lint are missing from $venv;" >&2
  echo "  install them: $py -m pip install -r $here/../.ci/requirements.txt (or run .ci/run)" >&2
  exit 2
fi

# Prints the findings; returns non-zero on any.
check() {
  local template=$1 work status=0
  work="$(mktemp -d -p "$scratch")"
  "$cfn_lint" --regions "$region" --non-zero-exit-code informational -- "$template" || status=1
  # translate.py exits 1 after writing the JSON when only a house rule fails: lint it anyway.
  "$py" "$here/translate.py" --region "$region" "$template" "$work/translated.json" || status=1
  if [ -s "$work/translated.json" ] &&
    ! "$cfn_lint" --regions "$region" --non-zero-exit-code informational -- "$work/translated.json"; then
    status=1
    if [ "$keep_translated" = 1 ]; then
      local kept
      kept="$(mktemp --suffix=.json "${TMPDIR:-/tmp}/fluxcb-translated.XXXXXX")"
      cp "$work/translated.json" "$kept"
      echo "validate: line numbers above refer to the translated template, kept as $kept" >&2
    fi
  fi
  return "$status"
}

# Each case: a description, a Python expression turning the template text `t` into a broken one,
# and a string the findings must contain (so that the check failed for the right reason).
self_test() {
  local template="$here/template.yaml" work failures=0
  keep_translated=0
  work="$(mktemp -d -p "$scratch")"
  local cases=(
    "deliverer timeout 1200 s (Lambda's limit is 900)|t.replace('      Timeout: 90\n', '      Timeout: 1200\n', 1)|greater than the maximum of 900"
    "runtime that does not exist|t.replace('Runtime: provided.al2023', 'Runtime: provided.al2099', 1)|'provided.al2099' is not one of"
    "SQS batch size 20000 (limit 10000)|t.replace('BatchSize: !Ref DelivererBatchSize', 'BatchSize: 20000', 1)|greater than the maximum of 10000"
    "queue visibility timeout above SQS's 12 h|t.replace('VisibilityTimeout: 600', 'VisibilityTimeout: 50000', 1)|greater than the maximum of 43200"
    "visibility timeout below 6 x the deliverer's timeout|t.replace('VisibilityTimeout: 600', 'VisibilityTimeout: 300', 1)|is below 6 x DelivererFunction"
    "DLQ keeping messages no longer than the work queue|t.replace('MessageRetentionPeriod: 1209600', 'MessageRetentionPeriod: 345600', 1)|must exceed WorkQueue"
    "a role that does not exist|t.replace('Role: !GetAtt SweeperRole.Arn', 'Role: !GetAtt NoSuchRole.Arn', 1)|'NoSuchRole' is not one of"
  )
  local case desc mutation expect broken out
  for case in "${cases[@]}"; do
    IFS='|' read -r desc mutation expect <<<"$case"
    broken="$work/broken.yaml"
    "$py" - "$template" "$broken" "$mutation" <<'EOF'
import sys
src, dst, mutation = sys.argv[1:]
t = open(src, encoding="utf-8").read()
b = eval(mutation, {"t": t})
if b == t:
    sys.exit(f"self-test: the mutation {mutation!r} changed nothing; update it to the template")
open(dst, "w", encoding="utf-8").write(b)
EOF
    if out="$(check "$broken" 2>&1)"; then
      echo "FAIL  $desc: the check passed"
      failures=$((failures + 1))
    elif ! grep -qF -- "$expect" <<<"$out"; then
      echo "FAIL  $desc: the check failed, but its findings do not mention '$expect':"
      # shellcheck disable=SC2001 # indent every line
      sed 's/^/      /' <<<"$out"
      failures=$((failures + 1))
    else
      echo "ok    $desc: $(grep -m1 -F -- "$expect" <<<"$out" | cut -c1-150)"
    fi
  done
  if [ "$failures" -gt 0 ]; then
    echo "self-test: $failures of ${#cases[@]} broken templates got through"
    return 1
  fi
  echo "self-test: all ${#cases[@]} broken templates were caught"
}

case "${1:-}" in
  --self-test) self_test ;;
  -h | --help) sed -n '2,15p' "$0" ;;
  *)
    template="${1:-$here/template.yaml}"
    check "$template"
    echo "validate: $template is clean (cfn-lint $("$cfn_lint" --version | awk '{print $2}'), SAM translated and linted in $region)"
    ;;
esac
