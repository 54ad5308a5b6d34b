"""The `reprostack` command line: parse, then call `generate`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from reprostack import __version__
from reprostack.errors import Cancelled, ReprostackError
from reprostack.generate import generate

_NEW_HELP = """\
Generate a reproducible ML research project in DIR.

Asks for: project name, author (and, optionally, email and affiliation), license and copyright
year, framework (pytorch | sklearn), data source (sample | huggingface | git | url, each pinned by
revision, commit or sha256), Chameleon site and node type (those the site offers), and the seed;
then shows the answers and asks before writing anything. Ctrl-C at any prompt writes nothing.
The project is rendered in a temporary folder and moved into DIR only when every step succeeded;
it gets a git repository with a first commit, DVC with a local remote beside it (no server), and
MLflow tracking in a local SQLite store (no server).

The template is the one this reprostack carries (its checkout, or the copy shipped in the
package), or --template URL at --ref (a tag such as v0.2.0, a branch or a commit). Either way
.copier-answers.yml names the template by URL and version, so `copier update` works in any clone.

Then: cd DIR && snakemake --cores all    (or: dvc repro)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reprostack",
        description="Generate standalone, reproducible ML research repositories: a Snakemake "
        "workflow (also declared for DVC) from data to verified results, with DVC-versioned data "
        "and MLflow runs carrying full provenance.",
    )
    parser.add_argument("--version", action="version", version=f"reprostack {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    new = commands.add_parser(
        "new",
        help="generate a project (interactive, or --defaults/--data/--answers)",
        description=_NEW_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    new.add_argument("dir", type=Path, metavar="DIR", help="where to create the project")
    new.add_argument(
        "--defaults", action="store_true", help="ask nothing; use defaults for unanswered questions"
    )
    new.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="answer a question (repeatable), e.g. --data framework=sklearn",
    )
    new.add_argument(
        "--answers",
        type=Path,
        metavar="FILE",
        help="YAML file of answers (e.g. another project's .copier-answers.yml); --data wins",
    )
    new.add_argument("--force", action="store_true", help="replace a non-empty DIR")
    new.add_argument(
        "--dvc-remote",
        type=Path,
        metavar="PATH",
        help="folder for the local DVC remote (default: DIR-dvc-remote beside DIR)",
    )
    new.add_argument(
        "--template",
        metavar="URL",
        help="git URL of the template (e.g. https://github.com/reprostack/reprostack.git); "
        "default: the template this reprostack carries",
    )
    new.add_argument(
        "--ref",
        metavar="REF",
        help="tag, branch or commit of the template (default with --template: its latest release "
        "tag; without: the local checkout as it is, uncommitted changes included)",
    )
    return parser


def _answers(args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if args.answers is not None:
        try:
            loaded = yaml.safe_load(args.answers.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ReprostackError(f"--answers: cannot read '{args.answers}': {error}") from None
        if not isinstance(loaded, dict):
            raise ReprostackError(f"--answers: '{args.answers}' is not a YAML mapping of answers")
        data.update({k: v for k, v in loaded.items() if not str(k).startswith("_")})
    for item in args.data:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ReprostackError(f"--data: '{item}' is not KEY=VALUE; accepted: e.g. seed=7")
        data[key.strip()] = value
    return data


def _review(answers: Mapping[str, Any], dst: Path, remote: Path) -> bool:
    """Interactive mode: the answers, where the project and its DVC remote go, then a yes/no."""
    import questionary

    width = max(len(key) for key in answers) if answers else 0
    lines = [f"reprostack: about to create {dst}"]
    lines += [f"  {key:<{width}}  {'(none)' if value == '' else value}" for key, value in answers.items()]
    lines += [f"  {'DVC remote':<{width}}  {remote}"]
    print("\n".join(lines), file=sys.stderr, flush=True)
    return bool(questionary.confirm("Create the project with these answers?", default=True).unsafe_ask())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        data = _answers(args)
        interactive = not args.defaults and sys.stdin.isatty()
        root = generate(
            args.dir,
            data,
            defaults=not interactive,
            force=args.force,
            dvc_remote=args.dvc_remote,
            template=args.template,
            ref=args.ref,
            progress=lambda step: print(f"reprostack: {step}", file=sys.stderr, flush=True),
            review=_review if interactive else None,
        )
    except (Cancelled, KeyboardInterrupt) as stop:
        print("reprostack: cancelled; nothing was written", file=sys.stderr, flush=True)
        return 1 if isinstance(stop, Cancelled) and not stop.interrupted else 130
    except ReprostackError as error:
        print(f"reprostack: error: {error}", file=sys.stderr)
        return 2
    print(f"Created {root}\nNext: cd {root} && snakemake --cores all   (or: dvc repro)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
