#!/usr/bin/env python3
"""Print the failed tests of a ctest JUnit report with the tail of their output.

run-tests.sh calls this in its summary, so the names and last lines of each
failure appear at the end of the log, where CI excerpts are taken from.
"""
import argparse
import sys
import xml.etree.ElementTree as ElementTree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report", help="JUnit XML written by ctest --output-junit")
    parser.add_argument("--lines", type=int, default=25,
                        help="output lines to show per failed test (default 25)")
    args = parser.parse_args()

    try:
        root = ElementTree.parse(args.report).getroot()
    except (OSError, ElementTree.ParseError) as error:
        print(f"cannot read test report {args.report}: {error}")
        return 1

    failed = [case for case in root.iter("testcase")
              if case.get("status") == "fail" or case.find("failure") is not None]
    if not failed:
        print(f"{args.report}: no failed tests recorded")
        return 0

    print(f"{args.report}: {len(failed)} failed test(s)")
    for case in failed:
        name = case.get("name", "?")
        try:
            duration = f"{float(case.get('time', '')):.1f} s"
        except ValueError:
            duration = "unknown time"
        print(f"--- {name} (failed after {duration}), last {args.lines} lines:")
        output = case.findtext("system-out") or ""
        for line in output.rstrip().splitlines()[-args.lines:]:
            print(f"    {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
