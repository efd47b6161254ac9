"""Translate a SAM template into plain CloudFormation JSON, offline.

    python deploy/translate.py TEMPLATE OUT.json [--region us-east-1]

Used by deploy/validate.sh: cfn-lint then checks the resources SAM generates (functions, event
source mappings, permissions, the HTTP API's stage), which it does not check in the SAM source.

It also checks two rules of this project that cfn-lint does not know (house_rules below).

Offline means: no AWS call and no credentials. A boto3 Session is given a region only so that
ARNs and pseudo parameters can be filled in; local CodeUri paths (which `sam build` / `sam deploy`
replace with S3 locations) become placeholder S3 URIs; and managed policies named in a
function's Policies resolve through an empty map (the functions here use explicit roles).
"""

import argparse
import json
import sys

import boto3
from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

PLACEHOLDER_BUCKET = "fluxcb-validate-placeholder"


def placeholder_code_uris(template: dict) -> None:
    """Replace local CodeUri paths with S3 URIs, as `sam package` would."""

    def fix(owner: dict, name: str) -> None:
        uri = owner.get("CodeUri")
        if isinstance(uri, str) and not uri.startswith("s3://"):
            owner["CodeUri"] = f"s3://{PLACEHOLDER_BUCKET}/{name}.zip"

    fix(template.get("Globals", {}).get("Function", {}), "globals")
    for logical_id, resource in template.get("Resources", {}).items():
        if resource.get("Type") == "AWS::Serverless::Function":
            fix(resource.setdefault("Properties", {}), logical_id)


def house_rules(cfn: dict) -> list[str]:
    """Rules of this project beyond cfn-lint's, on the translated template (literal values only)."""
    resources = cfn.get("Resources", {})
    problems = []

    def ref_of(value):
        if isinstance(value, dict):
            if "Ref" in value:
                return value["Ref"]
            if "Fn::GetAtt" in value:
                return value["Fn::GetAtt"][0]
        return None

    def number(value, default):
        """A literal number (int or digit string), else the AWS default."""
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
        return default

    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Lambda::EventSourceMapping":
            continue
        props = resource.get("Properties", {})
        queue_id, function_id = ref_of(props.get("EventSourceArn")), ref_of(props.get("FunctionName"))
        queue, function = resources.get(queue_id, {}), resources.get(function_id, {})
        if queue.get("Type") != "AWS::SQS::Queue" or function.get("Type") != "AWS::Lambda::Function":
            continue
        # AWS's guidance for SQS triggers: visibility timeout >= 6 x the function's timeout, so a
        # batch retried after throttling is not redelivered while it still runs.
        visibility = number(queue.get("Properties", {}).get("VisibilityTimeout"), 30)
        timeout = number(function.get("Properties", {}).get("Timeout"), 3)
        if visibility < 6 * timeout:
            problems.append(
                f"{queue_id}: VisibilityTimeout {visibility} s is below 6 x {function_id}'s "
                f"Timeout {timeout} s = {6 * timeout} s ({logical_id})"
            )

    for queue_id, queue in resources.items():
        if queue.get("Type") != "AWS::SQS::Queue":
            continue
        redrive = queue.get("Properties", {}).get("RedrivePolicy") or {}
        dlq_id = ref_of(redrive.get("deadLetterTargetArn"))
        dlq = resources.get(dlq_id, {})
        if not dlq:
            continue
        # A standard queue's message keeps its original enqueue time in the DLQ.
        kept = number(queue["Properties"].get("MessageRetentionPeriod"), 345600)
        dlq_kept = number(dlq.get("Properties", {}).get("MessageRetentionPeriod"), 345600)
        if dlq_kept <= kept:
            problems.append(
                f"{dlq_id}: MessageRetentionPeriod {dlq_kept} s must exceed {queue_id}'s {kept} s"
            )
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("template")
    parser.add_argument("out")
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()

    with open(args.template, encoding="utf-8") as f:
        template = yaml_parse(f.read())
    placeholder_code_uris(template)

    session = boto3.session.Session(region_name=args.region)
    translator = Translator(managed_policy_map=None, sam_parser=Parser(), boto_session=session)
    try:
        output = translator.translate(
            template, parameter_values={}, get_managed_policy_map=lambda: {}
        )
    except InvalidDocumentException as e:
        print(f"{args.template}: SAM cannot translate it:", file=sys.stderr)
        for cause in e.causes:
            print(f"  - {cause.message}", file=sys.stderr)
        return 1

    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(output, f, indent=1, sort_keys=False)
        f.write("\n")
    problems = house_rules(output)
    for problem in problems:
        print(f"{args.template}: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
