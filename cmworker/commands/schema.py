"""``cmworker schema``: print the function schemas inferred from an app's type hints."""

from __future__ import annotations

import argparse
import json
import sys

from cmworker.app.schema import UnsupportedType, app_schemas, load_type_ids


def configure_schema(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", nargs="?", metavar="APP",
                        help="module, module:attribute, or path of a .py file (default: `app` in cmworker.toml)")
    parser.add_argument("--compact", action="store_true", help="print the JSON on one line")
    parser.add_argument("--ontology-metadata-config", metavar="PATH", default=None,
                        help="the apiNameToTypeId file for functions declaring edits= (default: "
                             "./ontology_metadata_config.json if it exists); an edited type missing from it "
                             "is an error")


def run_schema(args: argparse.Namespace) -> int:
    """Print the JSON array of the app's function schemas; exit 1 when the app or a schema fails."""
    from cmworker.app.registry import load_app
    from cmworker.errors import AppLoadError, ConfigError

    try:
        app = args.app
        if app is None:
            from cmworker.config import load_config

            app = load_config().require_app()
        functions = load_app(app)
        schemas = app_schemas(functions, load_type_ids(args.ontology_metadata_config), strict=True)
    except (AppLoadError, ConfigError, UnsupportedType, OSError, ValueError) as exc:
        print(f"cmworker schema: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(schemas, indent=None if args.compact else 2))
    return 0
